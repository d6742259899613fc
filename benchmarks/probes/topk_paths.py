"""Probe: the ``topk`` mask's two-launch Triton path (``kernels/topk_rank``) against the torch-sort path it replaced
on CUDA (torch sorts per group + the ``topk_compact`` kernel), same scores and budget, same run; Llama-3.1-8B
shape (32 heads, G=1) at 32K .. 1M tokens. Checks that both give the same layout and prints a table.

Scores are random (``torch.rand``, so no ties), budgets one ratio per head like the ``dynamic`` budget's
(``ceil(r_h * visible)``, ``r_h`` uniform in [0.01, 0.2]): the layout's ``max_k`` is about 0.2 * nKb.

    python benchmarks/probes/topk_paths.py --n 32k 128k 256k 1m --out benchmarks/results/topk_paths_h200.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

from sparsekit import AttentionProblem, BlockScores, Budget
from sparsekit.plugins.common import masks

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import device_meta, parse_n  # noqa: E402  (benchmarks/_common.py)

HQ, HKV, D, BLOCK = 32, 8, 128, 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="+", default=["32k", "128k", "256k", "1m"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for n_s in args.n:
        n = parse_n(n_s)
        # the problem only needs shapes: 1-dim heads keep the probe's memory small
        q = torch.empty(1, HQ, n, 1, device=dev, dtype=torch.bfloat16)
        k = torch.empty(1, HKV, n, 1, device=dev, dtype=torch.bfloat16)
        prob = AttentionProblem.create(q, k, block_q=BLOCK, block_k=BLOCK, causal=True)
        gen = torch.Generator(device=dev).manual_seed(n)
        scores = BlockScores(torch.rand(1, 1, prob.nQb, prob.nKb, device=dev, generator=gen), "mass")
        _, _, visible = prob.block_bounds()
        r = 0.01 + 0.19 * torch.rand(1, HQ, 1, device=dev, generator=gen)
        budget = Budget("count", (r * visible[:, None, :]).ceil().to(torch.int32))
        mask = masks.TopKMask(impl="triton")
        new = mask.build(prob, scores, budget)
        ms_new = triton.testing.do_bench(lambda: mask.build(prob, scores, budget), rep=300, return_mode="median")
        orig = masks._rank_reasons
        masks._rank_reasons = lambda *a: ["probe: the torch-sort path"]
        try:
            old = mask.build(prob, scores, budget)
            ms_old = triton.testing.do_bench(lambda: mask.build(prob, scores, budget), rep=300, return_mode="median")
        finally:
            masks._rank_reasons = orig
        same = bool(torch.equal(new.kv_counts, old.kv_counts) and torch.equal(new.kv_indices, old.kv_indices))
        rows.append(dict(n=n, nKb=prob.nKb, max_k=int(new.max_k), topk_rank_ms=ms_new, torch_sort_ms=ms_old,
                         same_layout=same))
        print(json.dumps(rows[-1]), flush=True)
        del q, k, scores, budget, new, old
        torch.cuda.empty_cache()
    meta = device_meta(probe="topk_paths")
    print(f"\n{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}")
    print(f"{'N':>8} {'nKb':>6} {'max_k':>6} {'topk_rank ms':>13} {'torch sort ms':>14} {'same':>5}")
    for r in rows:
        print(f"{r['n']:>8} {r['nKb']:>6} {r['max_k']:>6} {r['topk_rank_ms']:>13.3f} {r['torch_sort_ms']:>14.3f} "
              f"{str(r['same_layout']):>5}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
