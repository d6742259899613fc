"""Probe: the whole ProxyAttn plan with and without the budget beside the estimate (``overlap_budget``) and with
and without the narrow rank sorts (``topk_rank``'s ``narrow``), all four combinations in one run, against dense
cuDNN SDPA timed in the same run; plus the mask stage alone both ways and its launch A alone at each sort width.
Shapes and inputs of ``bench_planning.py`` (Llama-3.1-8B: 32/8 heads, G=1; Qwen2.5-7B: 28/4 heads, G=4; stride 4,
blocks 128).

The variants run interleaved, ``--rounds`` times each (medians). Each variant's layout is checked equal to the
default plan's (bit for bit).

    python benchmarks/probes/plan_overlap.py --n 32k 128k --out benchmarks/results/plan_overlap_h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_planning as bp  # noqa: E402
from _common import device_meta, parse_n  # noqa: E402

from sparsekit.kernels.topk_rank import op as rank_op  # noqa: E402


def _narrow_all(block_k: int) -> int:
    """The narrow sorts at every width from 128 keys (the widest rule tried)."""
    return 2 if block_k >= 256 else 1 if block_k >= 128 else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="+", default=["32k", "128k"])
    ap.add_argument("--shapes", nargs="+", default=list(bp.SHAPES))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant (medians reported)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    auto_narrow = rank_op.narrow_for
    for shape in args.shapes:
        for n in map(parse_n, args.n):
            q, k, v, gen, _ = bp.make_inputs(shape, n, 131072)
            dense_ms, _ = bp.time_dense("cudnn", q, k, v, n, once_from=1 << 30)
            attn = bp.build(shape, "auto")
            problem = attn.problem(q, k)
            est, bud, mask = attn.estimator, attn.budgeter, attn.mask
            scores = est.estimate(problem)
            budget = bud.allocate(problem, scores)
            first, last, visible = problem.block_bounds()
            ref = attn.plan(q, k, timed=False).layout
            bp._warm(lambda: attn.plan(q, k, timed=False), seconds=0.5)
            out = dict(shape=shape, n=n, dense_cudnn_ms=dense_ms)
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):  # the variants interleaved, so that drifting clocks hit them alike
                for narrow in (False, True):
                    rank_op.narrow_for = _narrow_all if narrow else (lambda block_k: 0)
                    for overlap in (False, True):
                        attn.overlap_budget = overlap
                        key = f"plan_{'overlap' if overlap else 'seq'}_{'narrow' if narrow else 'full'}"
                        times.setdefault(key, []).append(bp.bench_ms(lambda: attn.plan(q, k, timed=False), n))
                        layout = attn.plan(q, k, timed=False).layout
                        same = bool(torch.equal(layout.kv_counts, ref.kv_counts)
                                    and torch.equal(layout.kv_indices, ref.kv_indices))
                        out[f"{key}_same_layout"] = out.get(f"{key}_same_layout", True) and same
                    times.setdefault(f"mask_{'narrow' if narrow else 'full'}", []).append(
                        bp.bench_ms(lambda: mask.build(problem, scores, budget), n))
                for narrow in (0, 1, 2):  # launch A alone (counts + ranks) at each sort width
                    times.setdefault(f"rank_narrow{narrow}", []).append(bp.bench_ms(lambda: rank_op.topk_rank(
                        scores.scores, first, last, visible, True, True, budget.value, narrow=narrow), n))
            for key, ts in times.items():
                out[f"{key}_ms"] = statistics.median(ts)
                out[f"{key}_ms_all"] = ts
            for key in [k for k in out if k.startswith("plan_") and k.endswith("_ms")]:
                out[key[:-3] + "_pct"] = 100 * out[key] / dense_ms
            rank_op.narrow_for = auto_narrow
            attn.overlap_budget = True
            out["estimate_ms"] = bp.bench_ms(lambda: est.estimate(problem), n)
            out["budget_ms"] = bp.bench_ms(lambda: bud.allocate(problem, scores), n)
            rows.append(out)
            shown = {k: (round(x, 4) if isinstance(x, float) else x) for k, x in out.items() if not k.endswith("_all")}
            print(shown, flush=True)
            del q, k, v, attn, problem, scores, budget, ref
            torch.cuda.empty_cache()
    print(f"\n{'shape':14s} {'N':>5s} {'cudnn':>8s} {'seq/full':>9s} {'seq/narrow':>10s} {'ovl/full':>9s} "
          f"{'ovl/narrow':>10s} {'pct':>6s} {'mask full':>9s} {'narrow':>7s} {'rank n=0/1/2':>20s} same")
    for r in rows:
        same = all(r[k] for k in r if k.endswith("same_layout"))
        print(f"{r['shape']:14s} {bp.fmt_n(r['n']):>5s} {r['dense_cudnn_ms']:8.2f} {r['plan_seq_full_ms']:9.3f} "
              f"{r['plan_seq_narrow_ms']:10.3f} {r['plan_overlap_full_ms']:9.3f} {r['plan_overlap_narrow_ms']:10.3f} "
              f"{r['plan_overlap_narrow_pct']:5.2f}% {r['mask_full_ms']:9.3f} {r['mask_narrow_ms']:7.3f} "
              f"{r['rank_narrow0_ms']:6.3f}/{r['rank_narrow1_ms']:6.3f}/{r['rank_narrow2_ms']:6.3f} {same}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"probe": "plan_overlap", **device_meta(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
