"""Probe: does the order in which the sparse kernel's programs start (``KernelConfig.m_chunk``) change its time?

The default order starts all heads of one q-tile, then the next q-tile (heaviest first). ``m_chunk = n``
starts ``n`` q-tiles of one head together, head after head, so that the programs running at once read the
K/V of fewer KV heads. Each program computes exactly the same thing in every order, so outputs must be
bitwise equal (checked). Layouts: ``bench_kernel.make_layout`` (sink + local window + scattered blocks drawn
per head / per KV group / shared by all heads) and the layouts ``build("proxyattn")`` plans on the synthetic
workload of ``bench_planning.py`` (Llama-3.1-8B shape).

    python benchmarks/probes/kernel_grid_order.py --n 128k --chunks 0 8 16 32 64 --out o.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_meta, parse_n  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.kernels.block_sparse import block_sparse_attention  # noqa: E402
from sparsekit.kernels.block_sparse import op as bs_op  # noqa: E402
from sparsekit.workloads import SyntheticWorkload  # noqa: E402

HQ, HKV, D, BLOCK = 32, 8, 128, 128


def rank_order(counts: torch.Tensor, idx: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The same kept blocks per row, walked by the score group's rank (highest first) instead of ascending, the
    diagonal block last (the two-loop kernel's mask-free prefix stays everything else). Heads of one score group
    keep nested block sets (ProxyAttn's per-head budgets over a shared score): in rank order they walk a
    common prefix at the same time; in ascending order each head's walk runs at its own pace."""
    B, H, nqb, max_k = idx.shape
    G = scores.shape[1]
    per_head = scores[:, (torch.arange(H, device=idx.device) * G) // H]  # [B, H, nQb, nKb]
    key = torch.gather(per_head, -1, idx.long()).float().nan_to_num(nan=-1e30).clamp(min=-1e30)
    slot = torch.arange(max_k, device=idx.device)
    diag = idx.long() >= torch.arange(nqb, device=idx.device)[None, None, :, None]  # Nq == Nk, 128-token blocks
    key = torch.where(diag, torch.full_like(key, -2e30), key)
    key = torch.where(slot < counts[..., None], key, torch.full_like(key, float("-inf")))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    return torch.gather(idx, -1, order).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", nargs="+", default=["128k"], help="sequence lengths (e.g. 32k 128k)")
    ap.add_argument("--chunks", nargs="+", type=int, default=[0, 8, 16, 32, 64], help="m_chunk values (0 first)")
    ap.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.1, 0.05],
                    help="densities of the make_layout layouts")
    ap.add_argument("--shares", nargs="+", default=["head", "all"], help="make_layout share modes")
    ap.add_argument("--gammas", nargs="*", type=float, default=[0.92, 0.9], help="proxyattn gamma layouts")
    ap.add_argument("--rep", type=float, default=300.0, help="do_bench rep (ms)")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    import triton.testing

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench_kernel import make_layout

    rows = []
    for n in map(parse_n, args.n):
        wl = SyntheticWorkload(n=n, heads=HQ, kv_heads=HKV, head_dim=D, seed=0)
        q, k, v = wl.generate(torch.bfloat16, "cuda")
        out = torch.empty_like(q)
        layouts = []
        for d in args.densities:
            for share in (args.shares if d < 1.0 else args.shares[:1]):
                c, i, _ = make_layout(n, d, seed=1000 + int(d * 1000), device="cuda", share=share)
                layouts.append((f"make_layout_{share}", d, c, i))
        for gamma in args.gammas:
            attn = sparsekit.build("proxyattn", estimator={"g": 1, "stride": 4}, budget={"gamma": gamma},
                                   kernel="triton")
            plan = attn.plan(q, k)
            lay = plan.layout
            layouts.append((f"proxyattn_gamma{gamma:g}", float(lay.density()), lay.kv_counts, lay.kv_indices))
            layouts.append((f"proxyattn_gamma{gamma:g}_rank", float(lay.density()), lay.kv_counts,
                            rank_order(lay.kv_counts, lay.kv_indices, plan.scores.scores)))
            del plan
        asc_out = {}
        for name, d, counts, idx in layouts:
            ref = None
            base = None
            for chunk in args.chunks:
                cfg = bs_op.default_config(D, torch.bfloat16, BLOCK, BLOCK)
                cfg = bs_op.short_sequence_config(cfg, D, k, v, q.device)
                cfg = dataclasses.replace(cfg, m_chunk=chunk)

                def fn(cfg=cfg):
                    return block_sparse_attention(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK, causal=True,
                                                  out=out, config=cfg)

                ms = triton.testing.do_bench(fn, warmup=50, rep=args.rep, return_mode="median")
                o = fn().clone()
                if ref is None:
                    ref, base = o, ms
                same = bool(torch.equal(o, ref))
                r = dict(n=n, layout=name, density=round(d, 4), m_chunk=chunk, ms=ms, vs_chunk0=base / ms,
                         bitwise_equal_to_chunk0=same, config=cfg.__dict__)
                if name.endswith("_rank") and name[:-5] in asc_out:
                    r["max_abs_diff_vs_ascending"] = (o.float() - asc_out[name[:-5]].float()).abs().max().item()
                rows.append(r)
                print(f"N={n:>7} {name:<24} d={d:.3f} m_chunk={chunk:>3}: {ms:8.3f} ms  x{base / ms:5.3f}  "
                      f"equal={same}", flush=True)
                del o
            if name.startswith("proxyattn") and not name.endswith("_rank"):
                asc_out[name] = ref
            del ref
        del asc_out
        del q, k, v, out, layouts
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(dict(meta=device_meta(), rows=rows), indent=1))
    print("\n| N | layout | density | " + " | ".join(f"m_chunk {c}" for c in args.chunks) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in args.chunks) + " |")
    keys = []
    for r in rows:
        key = (r["n"], r["layout"], r["density"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        cells = {r["m_chunk"]: r for r in rows if (r["n"], r["layout"], r["density"]) == key}
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(
            f"{cells[c]['ms']:.2f}{'' if cells[c]['bitwise_equal_to_chunk0'] else ' (DIFF)'}" if c in cells else "-"
            for c in args.chunks) + " |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
