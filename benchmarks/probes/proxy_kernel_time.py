"""Probe: how much of the ``proxy`` estimate stage is the score kernel itself (torch.profiler device time per
kernel) against the stage's do_bench time, Llama / Qwen shapes at 32K and 128K (inputs of ``bench_planning.py``).

    python benchmarks/probes/proxy_kernel_time.py --out o.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_planning as bp  # noqa: E402
from _common import device_meta, parse_n  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="+", default=["32k", "128k"])
    ap.add_argument("--shapes", nargs="+", default=list(bp.SHAPES))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        for n in map(parse_n, args.n):
            q, k, v, _, _ = bp.make_inputs(shape, n, 131072)
            attn = bp.build(shape, "auto")
            problem = attn.problem(q, k)
            est = attn.estimator
            stage_ms = bp.bench_ms(lambda: est.estimate(problem), n)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.reps):
                    est.estimate(problem)
                torch.cuda.synchronize()
            kernels = {}
            for e in prof.key_averages():
                t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
                if t and e.count:
                    kernels[e.key[:80]] = round(t / 1e3 / args.reps, 4)  # ms per estimate call
            row = dict(shape=shape, n=n, stage_do_bench_ms=stage_ms, kernels_ms_per_call=kernels,
                       kernels_sum_ms=round(sum(kernels.values()), 4))
            rows.append(row)
            print(json.dumps(row), flush=True)
            del q, k, v, attn, problem
            torch.cuda.empty_cache()
    print(f"\n{'shape':14s} {'N':>5s} {'do_bench':>9s} {'kernels':>8s}  per kernel")
    for r in rows:
        print(f"{r['shape']:14s} {bp.fmt_n(r['n']):>5s} {r['stage_do_bench_ms']:9.3f} {r['kernels_sum_ms']:8.3f}  "
              + ", ".join(f"{k[:28]}={v}" for k, v in r["kernels_ms_per_call"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"probe": "proxy_kernel_time", **device_meta(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
