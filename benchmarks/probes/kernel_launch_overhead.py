"""Probe: is the sparse kernel at short lengths limited by the GPU or by the host that launches it?

For each layout (``bench_kernel.make_layout``, per-head scattered blocks) and each way of calling the kernel, three
figures per call:

* ``do_bench``: ``triton.testing.do_bench`` median (what ``bench_kernel.py`` reports; it flushes L2 before each
  call, so a host slower than the flush shows up as time);
* ``host_us``: wall time of 200 calls queued without synchronising (the launcher's Python plus Triton's launch);
* ``gpu_ms``: median of CUDA-graph replays of one call (no host work at all).

FlexAttention on the same layout is measured the same way. Run on a GPU:

    python benchmarks/probes/kernel_launch_overhead.py --n 8k 32k --out o.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_meta, graph_ms, host_us, parse_n  # noqa: E402

from sparsekit.kernels.block_sparse import block_sparse_attention  # noqa: E402
from sparsekit.kernels.block_sparse import op as bs_op  # noqa: E402

HQ, HKV, D, BLOCK = 32, 8, 128, 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", nargs="+", default=["8k"], help="sequence lengths")
    ap.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.1, 0.05])
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    import triton.testing

    from bench_kernel import flex_block_mask, make_layout

    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)

    def causal_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    rows = []
    for n in map(parse_n, args.n):
        torch.manual_seed(0)
        q = torch.randn(1, HQ, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        base = bs_op.short_sequence_config(bs_op.default_config(D, torch.bfloat16, BLOCK, BLOCK), D, k, v, q.device)
        for d in args.densities:
            counts, idx, _ = make_layout(n, d, seed=1000 + int(d * 1000), device="cuda", share="head")
            calls = {
                "triton_default": None,
                "triton_explicit_default": base,
                "triton_m_chunk0": dataclasses.replace(base, m_chunk=0),
            }
            fns = {name: (lambda c=c: block_sparse_attention(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK,
                                                             causal=True, out=out, config=c))
                   for name, c in calls.items()}
            if flex is not None:
                bm = flex_block_mask(counts, idx, n, causal_mod)
                fns["flex_same_layout"] = lambda bm=bm: flex(q, k, v, block_mask=bm, enable_gqa=True)
            for name, fn in fns.items():
                fn()
                torch.cuda.synchronize()
                r = dict(n=n, density=d, impl=name,
                         do_bench_ms=float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")),
                         host_us=host_us(fn), gpu_ms=graph_ms(fn))
                rows.append(r)
                print(f"N={n:>6} d={d:<5} {name:<24} do_bench {r['do_bench_ms']:.4f} ms  host {r['host_us']:7.1f} us"
                      f"  graph {r['gpu_ms'] if r['gpu_ms'] is None else round(r['gpu_ms'], 4)} ms", flush=True)
        del q, k, v, out
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(dict(meta=device_meta(), rows=rows), indent=1))
    print("\n| N | density | impl | do_bench ms | host us / call | graph ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        g = "-" if r["gpu_ms"] is None else f"{r['gpu_ms']:.4f}"
        print(f"| {r['n']} | {r['density']} | {r['impl']} | {r['do_bench_ms']:.4f} | {r['host_us']:.1f} | {g} |")


if __name__ == "__main__":
    main()
