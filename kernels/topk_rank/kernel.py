"""Triton kernels of the top-k rank contract (``@triton.jit`` code only; contract in ``naive.py``).

``_topk_rank`` (launch A), one program per ``(b, g, q-block row i)``:

* counts: for the ``HPG`` heads of group ``g``, ``clamp(budget, forced, visible)`` (``forced`` from the block
  bounds, as ``forced_count``), stored as int32, and their maximum ``tl.atomic_max``-ed into one int32;
* rank: the row's sort key as an order-preserving int32 image of the float32 key (``+-inf`` scores as
  ``+-float32 max``, forced blocks ``+inf``, NaN and invisible blocks ``-inf``, ``-0.0 == +0.0``) in the high
  32 bits of an int64 and ``BLOCK_K - 1 - j`` in the low bits (unique keys: ties go to the lower block index),
  one descending ``tl.sort``, then a scatter store ``rank[j] = position``. With ``NARROW`` >= 1 (2), a row
  seeing at most ``BLOCK_K / 2`` (``/ 4``) blocks sorts only that many keys (a runtime branch: under causal about
  half the rows of a long sequence take it) and stores ``rank[j] = j`` for the blocks past them, as the full sort
  would (they are invisible, and invisible blocks come last in index order).

``_topk_select`` (launch B), one program per ``(b, i, h)`` (heads of one row adjacent: they read one rank row):
walks the visible blocks in tiles of ``BLOCK`` (ascending ``j``), flags ``rank < count``, turns the flags into
slots with ``tl.cumsum`` plus the running count of earlier tiles and stores the kept block indices, then writes
0 to the padding slots ``count .. K-1``. Nothing but the output is written.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _head_row, _kept_in_tile

POS_INF_IMAGE = tl.constexpr(0x7F800000)  # int32 image of +inf (naive.POS_INF_IMAGE)
NEG_INF_IMAGE = tl.constexpr(-0x7F800001)  # int32 image of -inf (naive.NEG_INF_IMAGE)


@triton.jit
def _forced_count(fst, lst, vis, SINK: tl.constexpr, DIAGONAL: tl.constexpr):
    # the diagonal blocks [first, last] clipped to the visible prefix, plus block 0 if not among them
    if DIAGONAL:
        lo = tl.maximum(fst, 0)
        forced = tl.maximum(tl.minimum(lst + 1, vis) - lo, 0)
        if SINK:
            forced += ((vis > 0) & (lo > tl.minimum(lst, 0))).to(tl.int32)
    else:
        if SINK:
            forced = (vis > 0).to(tl.int32)
        else:
            forced = vis * 0
    return forced


@triton.jit
def _topk_rank(SCORES, BUDGET, FIRST, LAST, VISIBLE, RANK, COUNTS, MAX_K, n, G, HPG, nKb,
               s_sb, s_sg, s_si,  # scores strides, last dim contiguous
               s_bb, s_bh, s_bi,  # budget strides
               s_fb, s_fi, s_lb, s_li, s_vb, s_vi,  # first / last / visible strides
               s_rb, s_rg, s_ri,  # rank strides, last dim contiguous
               s_cb, s_ch, s_ci,  # counts strides
               SINK: tl.constexpr, DIAGONAL: tl.constexpr, WITH_COUNTS: tl.constexpr, WITH_RANK: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, NARROW: tl.constexpr):
    pid = tl.program_id(0)
    i = pid % n
    bg = pid // n
    g = bg % G
    b = bg // G
    fst = tl.load(FIRST + b * s_fb + i * s_fi).to(tl.int32)
    lst = tl.load(LAST + b * s_lb + i * s_li).to(tl.int32)
    vis = tl.load(VISIBLE + b * s_vb + i * s_vi).to(tl.int32)
    b64, g64, i64 = b.to(tl.int64), g.to(tl.int64), i.to(tl.int64)

    if WITH_COUNTS:
        # counts of the group's heads: the budget clamped to [forced, visible]
        forced = _forced_count(fst, lst, vis, SINK, DIAGONAL)
        offs_h = tl.arange(0, BLOCK_H)
        row_max = forced * 0
        for h0 in range(0, HPG, BLOCK_H):
            hh = h0 + offs_h
            ok = hh < HPG
            h = (g * HPG + hh).to(tl.int64)
            bud = tl.load(BUDGET + b64 * s_bb + h * s_bh + i64 * s_bi, mask=ok, other=0)
            c = tl.minimum(tl.maximum(bud, forced), vis)
            tl.store(COUNTS + b64 * s_cb + h * s_ch + i64 * s_ci, c, mask=ok)
            row_max = tl.maximum(row_max, tl.max(tl.where(ok, c, 0), 0))
        tl.atomic_max(MAX_K, row_max)  # one scalar atomic per program

    if WITH_RANK:
        src = SCORES + (b64 * s_sb + g64 * s_sg + i64 * s_si)
        dst = RANK + (b64 * s_rb + g64 * s_rg + i64 * s_ri)
        # a row that sees at most a quarter (half) of the blocks sorts a quarter (half) as many keys: blocks past
        # the sort hold rank j (invisible blocks come last, in index order), written without sorting
        if NARROW >= 2 and vis <= BLOCK_K // 4:
            _rank_row(src, dst, nKb, fst, lst, vis, SINK, DIAGONAL, BLOCK_K // 4)
            _rank_tail(dst, nKb, BLOCK_K // 4, BLOCK_K)
        elif NARROW >= 1 and vis <= BLOCK_K // 2:
            _rank_row(src, dst, nKb, fst, lst, vis, SINK, DIAGONAL, BLOCK_K // 2)
            _rank_tail(dst, nKb, BLOCK_K // 2, BLOCK_K)
        else:
            _rank_row(src, dst, nKb, fst, lst, vis, SINK, DIAGONAL, BLOCK_K)


@triton.jit
def _rank_row(src, dst, nKb, fst, lst, vis, SINK: tl.constexpr, DIAGONAL: tl.constexpr, W: tl.constexpr):
    # ranks of blocks 0 .. W-1 (those below nKb) by one descending sort of W keys; every visible block is < W
    j = tl.arange(0, W)
    # padding lanes (j >= nKb) end up -inf, after every real block
    s = tl.load(src + j, mask=j < nKb, other=float("-inf"))
    # order-preserving int32 image of the float key: integer ops only (no float compare, no flush to zero)
    bits = s.to(tl.int32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    img = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    img = tl.where(mag == 0, 0, img)  # -0.0 ties with +0.0, as in a float sort
    img = tl.minimum(tl.maximum(img, NEG_INF_IMAGE + 1), POS_INF_IMAGE - 1)  # +-inf scores: +-float32 max
    img = tl.where(mag > POS_INF_IMAGE, NEG_INF_IMAGE, img)  # NaN ranks as -inf
    if DIAGONAL:
        img = tl.where((j >= fst) & (j <= lst), POS_INF_IMAGE, img)
    if SINK:
        img = tl.where(j == 0, POS_INF_IMAGE, img)
    img = tl.where(j >= vis, NEG_INF_IMAGE, img)  # last: invisible beats forced
    # unique int64 keys (lower block index wins ties), one descending sort
    key = (img.to(tl.int64) << 32) | (W - 1 - j).to(tl.int64)
    key = tl.sort(key, descending=True)
    # scatter: block jj sits at position p of the order
    jj = (W - 1) - key.to(tl.int32)  # the low 32 bits
    p = tl.arange(0, W)
    tl.store(dst + jj, p, mask=jj < nKb)


@triton.jit
def _rank_tail(dst, nKb, W: tl.constexpr, BLOCK_K: tl.constexpr):
    # blocks W .. nKb-1 of a row seeing at most W blocks: invisible, so rank j (their index order after the
    # visible ones, as the full sort puts them)
    j = tl.arange(0, BLOCK_K)
    tl.store(dst + j, j, mask=(j >= W) & (j < nKb))


@triton.jit
def _topk_select(RANK, COUNTS, VISIBLE, OUT, K, n, Hq, HPG,
                 s_rb, s_rg, s_ri,  # rank strides, last dim contiguous
                 s_cb, s_ch, s_ci,  # counts strides
                 s_vb, s_vi,  # visible strides
                 s_ob, s_oh, s_oi,  # out strides, last dim contiguous
                 BLOCK: tl.constexpr):
    b, h, i, g = _head_row(tl.program_id(0), n, Hq, HPG)
    c = tl.load(COUNTS + b * s_cb + h * s_ch + i * s_ci).to(tl.int32)
    vis = tl.load(VISIBLE + b * s_vb + i * s_vi).to(tl.int32)
    src = RANK + (b * s_rb + g * s_rg + i * s_ri)  # int64 row offsets
    dst = OUT + (b * s_ob + h * s_oh + i * s_oi)
    offs = tl.arange(0, BLOCK)
    # kept blocks: the visible ones ranked below c (invisible blocks rank >= visible >= c), ascending
    kept_before = c * 0  # int32 scalar: kept blocks in earlier tiles
    for start in range(0, vis, BLOCK):
        j = start + offs
        ok = j < vis
        r = tl.load(src + j, mask=ok, other=0)
        keep, cs, n_kept = _kept_in_tile(r, c, ok, kept_before)
        tl.store(dst + (cs - 1), j, mask=keep)
        kept_before += n_kept
    # padding: slots c .. K-1
    zero = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(c, K, BLOCK):
        m = start + offs
        tl.store(dst + m, zero, mask=m < K)
