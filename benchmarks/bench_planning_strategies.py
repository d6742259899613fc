"""Planning cost of every registered preset (estimator + budget + mask) on one GPU (meant for an H100).

Shape ``llama-3.1-8b``: bf16, B=1, Hq=32, Hkv=8, D=128, causal prefill of N tokens, blocks 128x128. For each N
(default 32K and 128K) and each registered preset (``sparsekit.get_registry().presets``, or ``--presets``):

* ``attn.plan(q, k, timed=True)``: per-stage milliseconds (estimate / budget / mask), median of ``--plans``
  calls after one warm-up call;
* ``triton.testing.do_bench`` median of the whole ``attn.plan(q, k, timed=False)``;
* the layout's density, and (``--attend``, default on) the kernel ``auto`` picks and its time on the plan.

Dense causal attention through torch SDPA with the cuDNN backend is timed in the same run, so every
planning time is also reported as a percentage of dense attention. Each row catches its own errors
(OOM included) and records them. Results go to ``--out`` as JSON with the GPU name, torch/triton
versions and the date; a short table is printed last.

Usage::

    python benchmarks/bench_planning_strategies.py --out benchmarks/results/planning_h100.json
    python benchmarks/bench_planning_strategies.py --n 32k --presets vertical_slash block_topk streaming
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import traceback
from typing import Any

import torch
import torch.nn.functional as F

from _common import device_meta, parse_n  # benchmarks/_common.py

SHAPE = {"name": "llama-3.1-8b", "B": 1, "Hq": 32, "Hkv": 8, "D": 128, "dtype": "bfloat16", "block": 128}


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def bench_ms(fn: Any, rep_ms: float) -> float:
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=max(25, int(rep_ms // 4)), rep=int(rep_ms), return_mode="median"))


def dense_cudnn_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rep: float) -> tuple[float | None, str]:
    """Dense causal SDPA with the cuDNN backend; K/V expanded outside the timed region if it rejects GQA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def gqa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    try:
        return bench_ms(gqa, rep), "enable_gqa"
    except Exception:  # noqa: BLE001 - backend without GQA
        g = q.shape[1] // k.shape[1]
        ke, ve = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)

        def expanded() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

        try:
            return bench_ms(expanded, rep), "kv expanded (cuDNN rejected enable_gqa)"
        finally:
            del ke, ve


def planning_presets(names: list[str] | None) -> list[str]:
    import sparsekit

    reg = sparsekit.get_registry()
    if reg.failures:
        for f in reg.failures:
            print(f"  plugin {f.plugin} failed to load: {f.error}", file=sys.stderr)
    return list(names) if names else sorted(reg.presets)


def run_preset(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int, args: argparse.Namespace,
               dense_ms: float | None) -> dict[str, Any]:
    import sparsekit

    row: dict[str, Any] = {"n": n, "preset": name}
    try:
        attn = sparsekit.build(name, block_q=SHAPE["block"], block_k=SHAPE["block"])
        row["pipeline"] = attn.name
        plan = attn.plan(q, k, timed=True)  # warm-up (Triton JIT, caches)
        stage_runs: dict[str, list[float]] = {}
        for _ in range(args.plans):
            plan = attn.plan(q, k, timed=True)
            for key, ms in plan.timings.items():
                stage_runs.setdefault(key, []).append(ms)
        row["stage_ms"] = {key: statistics.median(vals) for key, vals in stage_runs.items()}
        row["stage_sum_ms"] = sum(row["stage_ms"].values())
        row["density"] = plan.density
        row["max_k"] = plan.layout.max_k
        del plan
        row["plan_ms"] = bench_ms(lambda: attn.plan(q, k, timed=False), args.rep_ms or (200 if n <= 32768 else 1000))
        if dense_ms:
            row["plan_pct_of_dense"] = 100.0 * row["plan_ms"] / dense_ms
        if args.attend:
            try:
                plan = attn.plan(q, k, timed=False)
                kernel = attn.select_kernel(plan.problem, v, plan.layout)
                row["kernel"] = kernel.label
                row["attend_ms"] = bench_ms(lambda: kernel.forward(plan.problem, v, plan.layout),
                                            args.rep_ms or (200 if n <= 32768 else 1000))
                row["total_ms"] = row["plan_ms"] + row["attend_ms"]
                if dense_ms:
                    row["speedup_vs_dense"] = dense_ms / row["total_ms"]
                del plan
            except torch.OutOfMemoryError as e:
                row["attend_error"] = "OOM: " + _err(e)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                row["attend_error"] = _err(e)
                if args.verbose:
                    traceback.print_exc()
    except torch.OutOfMemoryError as e:
        row["error"] = "OOM: " + _err(e)
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        row["error"] = _err(e)
        if args.verbose:
            traceback.print_exc()
    finally:
        torch.cuda.empty_cache()
    return row


def run_n(n: int, presets: list[str], args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    B, Hq, Hkv, D = SHAPE["B"], SHAPE["Hq"], SHAPE["Hkv"], SHAPE["D"]
    q = torch.randn(B, Hq, n, D, device=dev, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(B, Hkv, n, D, device=dev, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(B, Hkv, n, D, device=dev, dtype=torch.bfloat16, generator=gen)
    dense: dict[str, Any] = {"n": n, "preset": "sdpa_cudnn_dense_causal"}
    try:
        dense["attend_ms"], dense["note"] = dense_cudnn_ms(q, k, v, args.rep_ms or (200 if n <= 32768 else 1000))
        dense["density"] = 1.0
    except Exception as e:  # noqa: BLE001
        dense["error"] = _err(e)
    torch.cuda.empty_cache()
    rows.append(dense)
    print(f"  N={n:>6} dense cuDNN: {dense.get('attend_ms', dense.get('error'))}", flush=True)
    dense_ms = dense.get("attend_ms")
    for name in presets:
        row = run_preset(name, q, k, v, n, args, dense_ms)
        rows.append(row)
        shown = row.get("error") or f"plan {row['plan_ms']:.2f} ms, density {row['density']:.3f}"
        print(f"  N={n:>6} {name:<16} {shown}", flush=True)
    del q, k, v
    torch.cuda.empty_cache()


def print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    print()
    hdr = (f"{'N':>7} {'preset':<24} {'dens':>6} {'estimate':>9} {'budget':>8} {'mask':>8} {'plan':>9} "
           f"{'%dense':>7} {'attend':>9} {'x dense':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r.get("error"):
            print(f"{r['n']:>7} {r['preset']:<24} failed: {r['error'][:70]}")
            continue
        st = r.get("stage_ms", {})
        print(f"{r['n']:>7} {r['preset']:<24} {fmt(r.get('density'), '6.3f')} {fmt(st.get('estimate'), '9.2f')} "
              f"{fmt(st.get('budget'), '8.2f')} {fmt(st.get('mask'), '8.2f')} {fmt(r.get('plan_ms'), '9.2f')} "
              f"{fmt(r.get('plan_pct_of_dense'), '7.1f')} {fmt(r.get('attend_ms'), '9.2f')} "
              f"{fmt(r.get('speedup_vs_dense'), '8.2f')}")
    print("(ms; estimate/budget/mask: median plan(timed=True) stage timings; plan: do_bench median of the whole "
          "plan; x dense: cuDNN dense / (plan + attend))")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", nargs="+", default=["32k", "128k"], help="sequence lengths (default 32k 128k)")
    ap.add_argument("--presets", nargs="+", default=None, help="preset names (default: every registered preset)")
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--plans", type=int, default=5, help="timed plan() calls for the stage medians")
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep time (default by N)")
    ap.add_argument("--no-attend", dest="attend", action="store_false", help="skip timing the kernel on the plan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_planning_strategies.py needs a CUDA GPU")

    presets = planning_presets(args.presets)
    rows: list[dict[str, Any]] = []
    for n in map(parse_n, args.n):
        run_n(n, presets, args, rows)
    meta = {
        **device_meta(), "shape": SHAPE,
        "inputs": f"torch.randn (seed {args.seed})", "presets": presets,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2, default=str)
        print(f"wrote {args.out}")
    print(f"{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  {meta['date']}")
    print_table(rows)


if __name__ == "__main__":
    main()
