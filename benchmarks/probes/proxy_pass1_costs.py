"""Probe: where the proxy estimator's key walk spends its time (GPU only; not a test).

A stripped-down copy of the estimator's pass 1 (``kernels/proxy_scores``: per kv-tile ``q . k^T``, tile row
max stored to a scratch, online row max / sum of ``exp2``) on synthetic data: ``P`` programs, each with ``M``
rows of a bf16 query tile, walk the same ``T`` tiles of ``BLOCK_N`` keys (D 128; the keys stay in L2 like one
group's keys do in the real kernel). Variants leave one part out or replace it, and the differences place
the time:

* ``full``: as the estimator (dot, scale, row max, scratch store, exp2, row sum);
* ``nostore``: without the scratch store;
* ``noexp``: ``qk - m`` summed without the exponential (no MUFU work);
* ``maxonly``: dot, scale and row max only;
* ``dotsum``: dot and a plain row sum (no max, no exp);
* ``ex2f16``: the exponential as packed ``ex2.approx.f16x2`` (two per instruction), summed in fp32;
* ``ex2bf16``: the same with ``ex2.approx.ftz.bf16x2``.

Configurations ``M:BLOCK_N:WARPS:STAGES`` keep ``P * M`` rows fixed. Prints a table (ms and elements per ns),
writes JSON with the card and versions.

    python benchmarks/probes/proxy_pass1_costs.py --out benchmarks/results/proxy_pass1_costs_h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import device_meta  # noqa: E402  (benchmarks/_common.py)

MODES = {"full": 0, "nostore": 1, "noexp": 2, "maxonly": 3, "dotsum": 4, "ex2f16": 5, "ex2bf16": 6}


@triton.jit
def _exp2_variant(x, MODE: tl.constexpr):
    if MODE == 5:
        y = tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)],
                                      dtype=tl.float16, is_pure=True, pack=2).to(tl.float32)
    elif MODE == 6:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x.to(tl.bfloat16)],
                                      dtype=tl.bfloat16, is_pure=True, pack=2).to(tl.float32)
    else:
        y = tl.math.exp2(x)
    return y


@triton.jit
def _pass1_probe(Q, K, TMAX, OUT, qk_scale, T, M: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                 MODE: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, M)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + (pid * M + offs_m)[:, None].to(tl.int64) * D + offs_d[None, :])
    k_ptrs = K + offs_n[:, None] * D + offs_d[None, :]
    tmax_base = TMAX + pid.to(tl.int64) * T * M
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    for t in range(0, T):
        k = tl.load(k_ptrs + t * (BLOCK_N * D))
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        if MODE == 4:
            l_i += tl.sum(qk, 1)
        elif MODE == 3:
            m_i = tl.maximum(m_i, tl.max(qk, 1))
        else:
            t_max = tl.max(qk, 1)
            if MODE != 1:
                tl.store(tmax_base + t * M + offs_m, t_max)
            m_ij = tl.maximum(m_i, t_max)
            if MODE == 2:
                p = qk - m_ij[:, None]
            else:
                p = _exp2_variant(qk - m_ij[:, None], MODE)
            alpha = tl.math.exp2(m_i - m_ij)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_ij
    tl.store(OUT + pid * M + offs_m, m_i + tl.math.log2(tl.maximum(l_i, 1e-30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=528 * 64, help="P * M query rows in all")
    ap.add_argument("--tiles", type=int, default=512, help="kv-tiles of 128 keys each program walks")
    ap.add_argument("--configs", nargs="+", default=["64:128:4:3", "64:128:4:2", "64:128:4:4", "64:64:4:3",
                                                     "64:64:4:4", "64:64:4:5", "128:128:8:3", "128:128:4:2",
                                                     "128:64:8:3", "128:64:4:3"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from triton.testing import do_bench

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    D = 128
    keys = args.tiles * 128
    q = torch.randn(args.rows, D, device=dev, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(keys, D, device=dev, dtype=torch.bfloat16, generator=gen)
    scale = D ** -0.5 * 1.4426950408889634
    rows = []
    for c in args.configs:
        m, bn, warps, stages = (int(x) for x in c.split(":"))
        P = args.rows // m
        T = keys // bn
        tmax = torch.empty(P * T * m, device=dev, dtype=torch.float32)
        out = torch.empty(P * m, device=dev, dtype=torch.float32)
        ref = None
        for mode in args.modes if c == args.configs[0] else ["full"]:
            def launch(mode=mode):
                _pass1_probe[(P,)](q, k, tmax, out, scale, T, M=m, D=D, BLOCK_N=bn, MODE=MODES[mode],
                                   num_warps=warps, num_stages=stages)
            try:
                launch()
                torch.cuda.synchronize()
            except Exception as e:  # a variant that does not compile is reported, not fatal
                rows.append({"config": c, "mode": mode, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            lse = out.clone()
            if mode == "full":
                ref = lse if ref is None else ref
            err = None
            if mode in ("ex2f16", "ex2bf16", "nostore") and ref is not None:
                err = float((lse - ref).abs().max())  # lse in log2 units
            ms = do_bench(launch, warmup=25, rep=200)
            elems = args.rows * keys
            rows.append({"config": c, "mode": mode, "ms": ms, "elements_per_ns": elems / (ms * 1e6),
                         "tflops_qk": 2 * elems * D / (ms * 1e9), "max_abs_lse_diff_vs_full": err})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"benchmark": "proxy_pass1_costs", **device_meta(),
            "rows_total": args.rows, "keys": keys}
    print(f"\n{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  rows {args.rows} keys {keys}")
    print(f"{'config':>12s} {'mode':>8s} {'ms':>8s} {'elem/ns':>8s} {'TF/s qk':>8s} {'lse diff':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:>12s} {r['mode']:>8s}  ERROR {r['error'][:60]}")
            continue
        d = r["max_abs_lse_diff_vs_full"]
        print(f"{r['config']:>12s} {r['mode']:>8s} {r['ms']:8.3f} {r['elements_per_ns']:8.1f} "
              f"{r['tflops_qk']:8.1f} {'' if d is None else f'{d:9.2e}'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
