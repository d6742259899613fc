"""Proxy-score kernel: one program per q-block against split-K and several q-blocks per program, on one GPU.

Times ``sparsekit.kernels.proxy_scores.proxy_scores`` (bf16, D=128, blocks 128, stride 4, causal) for the
Llama-3.1-8B shape (32/8 heads, G=1) and the Qwen2.5-7B shape (28/4 heads, G=4) at each N, for each
``--splits`` configuration ``SPLIT[:Q_BLOCKS[:NUM_WARPS[:PASSES[:BLOCK_N[:STAGES]]]]]``: no split (one program
walks all kv-blocks of its q-blocks), split-K sizes (the kv-blocks of a q-block cut into splits; per-split row statistics combined, then
pooled), q-blocks per program, one or two walks over the keys (``PASSES``: 1 keeps the tile row maxima in a
scratch, 2 recomputes the scores for the pooling; default: ``one_pass_for``), and ``auto`` (``split_blocks_for`` /
``q_blocks_for`` / ``one_pass_for`` / ``across_groups_for``; ``auto2``: the same with two passes; ``auto+across``
/ ``auto+grouped``: the same with the heaviest programs of every group started first / one group after another,
``KernelConfig.across_groups``). Every output is checked against the
one-q-block, no-split, two-pass output (max abs difference, recorded as ``max_abs_diff_vs_split0``; -inf pattern
identical); the first configuration is the timing baseline. Prints a table, writes JSON.

    python benchmarks/bench_proxy_split.py --n 8k 32k 128k --out benchmarks/results/proxy_split_h100.json
    python benchmarks/bench_proxy_split.py --splits auto2 auto 0:2:4:2 0:2:4:1   # one pass against two
"""

from __future__ import annotations

import argparse
import json

import torch

from _common import device_meta, parse_n  # benchmarks/_common.py


SHAPES = {"llama-3.1-8b": (32, 8, 1), "qwen2.5-7b": (28, 4, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="+", default=["8k", "32k", "128k"])
    ap.add_argument("--splits", nargs="+", default=["0:1", "auto", "8", "32", "0:2", "0:4", "0:4:8"],
                    help="configurations SPLIT[:Q_BLOCKS[:NUM_WARPS[:PASSES[:BLOCK_N[:STAGES]]]]]: split_blocks (or "
                         "'auto' for the default choice of split, q-blocks and passes; 'auto2': the same with two "
                         "passes), q-blocks per program, warps, passes over the keys (1 or 2), keys per tile, "
                         "pipeline stages")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from triton.testing import do_bench

    from sparsekit.kernels.proxy_scores import op

    dev = torch.device("cuda")
    rows = []
    for shape in args.shapes:
        Hq, Hkv, G = SHAPES[shape]
        for n_s in args.n:
            N = parse_n(n_s)
            gen = torch.Generator(device=dev).manual_seed(N + Hq)
            q = torch.randn(1, Hq, N, 128, device=dev, dtype=torch.bfloat16, generator=gen)
            k = torch.randn(1, Hkv, N, 128, device=dev, dtype=torch.bfloat16, generator=gen)
            kw = dict(groups=G, stride=4, block_q=128, block_k=128, causal=True, checked=True)
            ref = op.proxy_scores(q, k, **kw, config={"split_blocks": 0, "q_blocks": 1, "one_pass": False})
            n_kb = ref.shape[-1]
            for sp in args.splits:
                if sp in ("auto", "auto2", "auto+across", "auto+grouped"):
                    cfg = {"auto": None, "auto2": {"one_pass": False}, "auto+across": {"across_groups": True},
                           "auto+grouped": {"across_groups": False}}[sp]
                    split = op.split_blocks_for(n_kb, G * ref.shape[2])
                else:
                    parts = [int(x) for x in sp.split(":")]
                    split = parts[0]
                    cfg = {"split_blocks": split}
                    if len(parts) > 1:
                        cfg["q_blocks"] = parts[1]
                    if len(parts) > 2:
                        cfg["num_warps"] = parts[2]
                    if len(parts) > 3:
                        cfg["one_pass"] = parts[3] == 1
                    if len(parts) > 4:
                        cfg["block_n"] = parts[4]
                    if len(parts) > 5:
                        cfg["num_stages"] = parts[5]
                out = op.proxy_scores(q, k, **kw, config=cfg)
                fin = torch.isfinite(ref)
                diff = float((out[fin] - ref[fin]).abs().max())
                same_inf = bool(torch.equal(torch.isneginf(out), torch.isneginf(ref)))
                ms = do_bench(lambda: op.proxy_scores(q, k, **kw, config=cfg), warmup=25, rep=200)
                rows.append({"shape": shape, "n": N, "split": sp, "split_blocks": split, "ms": ms,
                             "max_abs_diff_vs_split0": diff, "same_inf_pattern": same_inf})
                print(json.dumps(rows[-1]), flush=True)
            del q, k, ref
            torch.cuda.empty_cache()
    meta = {"benchmark": "proxy_split", **device_meta()}
    print(f"\n{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}")
    print(f"{'shape':14s} {'N':>7s} {'config':>14s} {'split':>6s} {'ms':>9s} {'x first':>9s} {'max|diff|':>10s}")
    base: dict = {}
    for r in rows:  # the first configuration of each (shape, N) is the baseline
        base.setdefault((r["shape"], r["n"]), r["ms"])
    for r in rows:
        print(f"{r['shape']:14s} {r['n']:7d} {r['split']:>14s} {r['split_blocks']:6d} {r['ms']:9.3f} "
              f"{base[(r['shape'], r['n'])] / r['ms']:9.2f} {r['max_abs_diff_vs_split0']:10.2e}"
              + ("" if r["same_inf_pattern"] else "  -inf MISMATCH"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
