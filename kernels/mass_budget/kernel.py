"""Triton kernel of the mass-to-budget step (``@triton.jit`` code only; contract in ``naive.py``).

One program per (batch, query head): it loads the head's ``nKb`` masses (padding reads 0), sorts them in
descending order with ``tl.sort``, takes the running sum with ``tl.cumsum``, counts the prefix below
``gamma``, then writes the head's count, ratio and the per-q-block counts in tiles of ``BLOCK_Q``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mass_budget(MASS, VISIBLE, PER_BLOCK, RATIO, COUNT, nKb, nQb, Hq, gamma, min_blocks,
                 s_mb, s_mh, s_vb, s_vq, s_pb, s_ph,
                 BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // Hq
    h = bh % Hq
    offs = tl.arange(0, BLOCK_K)
    valid = offs < nKb
    m = tl.load(MASS + b * s_mb + h * s_mh + offs, mask=valid, other=0.0)
    csum = tl.cumsum(tl.sort(m, descending=True), 0)
    below = ((csum < gamma) & valid).to(tl.int32)
    n_last = tl.load(VISIBLE + b * s_vb + (nQb - 1) * s_vq).to(tl.int32)
    count = tl.minimum(tl.sum(below, 0) + 1, n_last)
    tl.store(COUNT + bh, count)
    tl.store(RATIO + bh, tl.math.div_rn(count.to(tl.float32), n_last.to(tl.float32)))
    c64 = count.to(tl.int64)
    n64 = n_last.to(tl.int64)
    offs_q = tl.arange(0, BLOCK_Q)
    for q0 in range(0, nQb, BLOCK_Q):
        i = q0 + offs_q
        ok = i < nQb
        vis = tl.load(VISIBLE + b * s_vb + i * s_vq, mask=ok, other=0).to(tl.int64)
        per = (c64 * vis + n64 - 1) // n64  # non-negative operands: floor division
        per = tl.minimum(tl.maximum(per, min_blocks), vis)
        tl.store(PER_BLOCK + b * s_pb + h * s_ph + i, per.to(tl.int32), mask=ok)
