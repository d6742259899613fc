"""Triton kernel of the top-k compaction (``@triton.jit`` code only; contract in ``naive.py``).

One program per output row ``(b, h, i)`` (the heads of one row side by side: they read the same candidates):
it walks the group's candidates in tiles of ``BLOCK`` (ascending block index), flags those with
``rank < count``, turns the flags into slots with ``tl.cumsum`` plus the running count of earlier tiles, and
stores every candidate once: kept ones (their block index) to the front, dropped ones (0) to the padding
slots. Nothing but the output is written.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _head_row, _kept_in_tile


@triton.jit
def _topk_compact(ASC, RANK, COUNT, OUT, K, n, HPG,
                  s_ab, s_ag, s_ai,  # asc / rank strides (same layout), last dim contiguous
                  s_cb, s_ch, s_ci,  # count strides
                  s_ob, s_oh, s_oi,  # out strides, last dim contiguous
                  Hq, BLOCK: tl.constexpr):
    b, h, i, g = _head_row(tl.program_id(0), n, Hq, HPG)
    c = tl.load(COUNT + b * s_cb + h * s_ch + i * s_ci).to(tl.int32)
    src = b * s_ab + g * s_ag + i * s_ai  # int64 row offsets
    dst = OUT + (b * s_ob + h * s_oh + i * s_oi)
    offs = tl.arange(0, BLOCK)
    kept_before = c * 0  # int32 scalar: kept candidates in earlier tiles
    for start in range(0, K, BLOCK):
        m = start + offs
        valid = m < K
        r = tl.load(RANK + src + m, mask=valid, other=0)
        a = tl.load(ASC + src + m, mask=valid, other=0)
        keep, cs, n_kept = _kept_in_tile(r, c, valid, kept_before)  # cs: kept up to and including m
        slot = tl.where(keep, cs - 1, c + m - cs)
        tl.store(dst + slot, tl.where(keep, a, 0).to(tl.int32), mask=valid)  # a: int32 or int64
        kept_before += n_kept
