"""Triton kernel of the top-k compaction (``@triton.jit`` code only; contract in ``naive.py``).

One program per output row ``(b, h, i)``: it walks the group's candidates in tiles of ``BLOCK`` (ascending
block index), flags those with ``rank < count``, turns the flags into slots with ``tl.cumsum`` plus the
running count of earlier tiles, and stores every candidate once: kept ones (their block index) to the
front, dropped ones (0) to the padding slots. Nothing but the output is written.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _topk_compact(ASC, RANK, COUNT, OUT, K, n, HPG,
                  s_ab, s_ag, s_ai,  # asc / rank strides (same layout), last dim contiguous
                  s_cb, s_ch, s_ci,  # count strides
                  s_ob, s_oh, s_oi,  # out strides, last dim contiguous
                  Hq, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    i = row % n
    bh = row // n
    h = bh % Hq
    b = bh // Hq
    g = h // HPG
    c = tl.load(COUNT + b * s_cb + h * s_ch + i * s_ci).to(tl.int32)
    # int64 row offsets: a 1M-token layout has > 2^31 entries once B > 1
    b64, h64, i64 = b.to(tl.int64), h.to(tl.int64), i.to(tl.int64)
    src = b64 * s_ab + g.to(tl.int64) * s_ag + i64 * s_ai
    dst = OUT + (b64 * s_ob + h64 * s_oh + i64 * s_oi)
    offs = tl.arange(0, BLOCK)
    kept_before = c * 0  # int32 scalar: kept candidates in earlier tiles
    for start in range(0, K, BLOCK):
        m = start + offs
        valid = m < K
        r = tl.load(RANK + src + m, mask=valid, other=0)
        a = tl.load(ASC + src + m, mask=valid, other=0)
        keep = (r < c) & valid
        k32 = keep.to(tl.int32)
        cs = tl.cumsum(k32, 0) + kept_before  # kept up to and including m
        slot = tl.where(keep, cs - 1, c + m - cs)
        tl.store(dst + slot, tl.where(keep, a, 0).to(tl.int32), mask=valid)  # a: int32 or int64
        kept_before += tl.sum(k32, 0)
