"""Triton kernel of ProxyAttn's proxy block scores (``@triton.jit`` code only; see ``op.py``).

One program of ``_proxy_scores_fwd`` scores ``R`` consecutive q-blocks (``R`` = 1 or 2, see
``op.q_blocks_for``; their sampled rows form one tile, so every kv-tile is loaded once for ``R`` q-blocks) of one
(batch, group). It builds the group's proxy query once (the mean of the group's query heads, fused into the loads
of the sampled rows: every ``STRIDE``-th row counted back from the block's last row), then walks the kv-tiles its
rows can see twice:

* pass 1: per-row online max and sum of ``exp2(q . k * qk_scale)`` (fp32, log2 space) -> row lse;
* pass 2: per kv-block, the row-wise max of the raw scores (no exponentials), minus the row lse, max over
  rows, one ``exp2`` per kv-block -> the block's max-pooled probability (``max_r p_rj = 2^(max_r (max_j
  s_rj - lse_r))``, exact since ``exp2`` is monotonic).

With ``ONE_PASS`` the keys are walked once: pass 1 also stores every tile's row max of the raw scores in a
float32 scratch (``[tiles, rows]`` per program, 4 bytes per sampled row and kv-tile; packed: a program keeps only
the tiles it walks, ``_program_tiles``, from the offset ``_tmax_base`` sums, so under causal the scratch is about
half of a ``[programs, all tiles]`` rectangle; ``op.tmax_tiles`` sizes it), and pass 2 reads those
maxima back instead of recomputing the tiles' scores (same values, so the same result bit for bit), a
``[POOL_CHUNK, rows]`` tile of kv-blocks at a time (``_pool_from_tmax``): one reduction over the rows and one
vector store per chunk, not per kv-block (the per-block version cost ~40% on top of the key walk).

Tiles wholly below the causal diagonal of every sampled row and inside the sequence run without a mask.
Blocks past the q-block's causal horizon are written ``-inf``. No token-level score matrix is stored.

With few programs and long rows (``op.split_blocks_for``) the split-K kernels below run instead: the proxy
queries once (``_proxy_query``), per-split row statistics (``_proxy_stats_split``), then the combined lse and
per-split pooling (``_proxy_pool_split``); with ``ONE_PASS`` the first stores the tile row maxima (the same packed
scratch, one q-block per program) and the second only reads them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _combine_split_lse, _tile_scores


@triton.jit
def _round_to(x, DTYPE: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    # fp32 -> dot dtype; EMULATE_RTNE: the interpreter's fp32->bf16 cast truncates, so round to nearest
    # even on the bits first (exact; the GPU cast already rounds this way)
    if EMULATE_RTNE:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _row_stats(m_i, l_i, q, k_base, stride_kn, lo, hi, offs_n, q_pos, Nk, qk_scale, tmax_base,
               BLOCK_N: tl.constexpr, M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, STORE_TMAX: tl.constexpr):
    # pass 1: online row max / row sum over kv-tiles [lo, hi); STORE_TMAX: also each tile's row max of the raw
    # (scaled) scores -> tmax_base + t * M + row, read back by the pooling instead of recomputing the tile
    offs_m = tl.arange(0, M)
    for t in range(lo, hi):
        start_n = tl.multiple_of(t * BLOCK_N, BLOCK_N)
        qk = _tile_scores(q, k_base, stride_kn, start_n, offs_n, q_pos, Nk, qk_scale,
                          MASKED, CAUSAL, IEEE_DOT, UPCAST_DOT)
        t_max = tl.max(qk, 1)
        if STORE_TMAX:
            tl.store(tmax_base + t * M + offs_m, t_max)
        m_ij = tl.maximum(m_i, t_max)
        if MASKED:
            # rows that saw no key yet keep m = -inf: shift by 0 instead (p = 0, alpha = 0)
            m_ij = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_ij
    return m_i, l_i


@triton.jit
def _key_range(i, Nq, Nk, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_Q: tl.constexpr,
               CAUSAL: tl.constexpr):
    # keys any sampled row of q-block i sees (key_end) and keys every one of them sees (fast_end)
    start = i * BLOCK_Q
    last = tl.minimum(start + BLOCK_Q, Nq) - 1
    if CAUSAL:
        n_back = tl.minimum(N_SAMPLED - 1, (last - start) // STRIDE)
        key_end = tl.minimum(last + (Nk - Nq) + 1, Nk)
        fast_end = tl.minimum(last - n_back * STRIDE + (Nk - Nq) + 1, Nk)
    else:
        key_end = Nk
        fast_end = Nk
    return tl.maximum(key_end, 0), tl.maximum(fast_end, 0)


@triton.jit
def _program_tiles(p, n_qb, Nq, Nk, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_N: tl.constexpr, R: tl.constexpr, CAUSAL: tl.constexpr):
    # the keys any sampled row of program p's q-blocks p*R .. p*R+R-1 sees (key_end of its last q-block) and the
    # kv-tiles covering them (the tiles pass 1 walks); elementwise when p is a tensor (the scratch offsets below).
    # op.tmax_tiles is the host's sum of the counts over the programs: the two must agree
    i_last = tl.minimum(p * R + R, n_qb) - 1
    key_end, _ = _key_range(i_last, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, CAUSAL)
    return key_end, tl.cdiv(key_end, BLOCK_N)


@triton.jit
def _tiles_before(p, n_qb, Nq, Nk, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_Q: tl.constexpr,
                  BLOCK_N: tl.constexpr, R: tl.constexpr, CAUSAL: tl.constexpr):
    # sum of _program_tiles over the programs before p (int64: it passes 2^31 at 1M with 16-token tiles),
    # CHUNK programs per step: no extra launch or host table
    CHUNK: tl.constexpr = 1024
    acc = tl.zeros([CHUNK], dtype=tl.int64)
    for c0 in range(0, p, CHUNK):
        pp = c0 + tl.arange(0, CHUNK)
        _, n_t = _program_tiles(pp, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N, R, CAUSAL)
        acc += tl.where(pp < p, n_t, 0).to(tl.int64)
    return tl.sum(acc, 0)


@triton.jit
def _tmax_base(TMAX, pid_bg, p, tmax_tiles, n_qb, Nq, Nk, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr,
               BLOCK_S: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, R: tl.constexpr,
               CAUSAL: tl.constexpr):
    # program p's tile row maxima in the packed one-pass scratch [B * G, tmax_tiles, R * BLOCK_S] float32: the
    # programs of a (batch, group) one after the other, each holding only the _program_tiles tiles it walks
    # (under causal about half of an [n_programs, nKb * BLOCK_K // BLOCK_N] rectangle)
    first = pid_bg.to(tl.int64) * tmax_tiles + _tiles_before(p, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N,
                                                             R, CAUSAL)
    return TMAX + first * (R * BLOCK_S)


@triton.jit
def _sampled_rows(i0, n_qb, Nq, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_Q: tl.constexpr, R: tl.constexpr):
    # the sampled rows of q-blocks i0 .. i0 + R - 1 as one [R * BLOCK_S] vector: every STRIDE-th row counted back
    # from each block's last row; sub = which of the R q-blocks a row belongs to
    offs_m = tl.arange(0, R * BLOCK_S)
    sub = offs_m // BLOCK_S
    offs_s = offs_m % BLOCK_S
    qi = i0 + sub
    start = qi * BLOCK_Q
    last = tl.minimum(start + BLOCK_Q, Nq) - 1
    rows = last - offs_s * STRIDE
    row_ok = (offs_s < N_SAMPLED) & (rows >= start) & (qi < n_qb)
    rows = tl.minimum(tl.maximum(rows, 0), Nq - 1)
    return rows, row_ok, sub


@triton.jit
def _mean_query(Q, stride_qb, stride_qh, stride_qm, stride_qd, b64, g, QH, rows, row_ok, DTYPE: tl.constexpr,
                M: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # the proxy query of the rows: mean of the group's QH query heads (fp32 accumulation), rounded to the dot dtype
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b64 * stride_qb + rows[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd
    h0 = (g * QH).to(tl.int64)
    qp = tl.zeros([M, HEAD_DIM], dtype=tl.float32)
    for hh in range(0, QH):
        qp += tl.load(q_ptrs + (h0 + hh) * stride_qh, mask=row_ok[:, None], other=0.0).to(tl.float32)
    return _round_to(qp / QH, DTYPE, UPCAST_DOT)


@triton.jit
def _pool_blocks(out_base, stride_oi, stride_oj, i0, n_qb, Nq, Nk, lse, sub, q, k_base, stride_kn, lo, hi,
                 offs_n, q_pos, qk_scale, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
                 BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, R: tl.constexpr,
                 MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # pass 2 of the two-pass walk, R q-blocks at once: kv-blocks [lo, hi), the tiles' scores recomputed, max over
    # each q-block's sampled rows of 2^(s - lse); -inf where the kv-block lies past that q-block's causal horizon
    SUB: tl.constexpr = BLOCK_K // BLOCK_N
    for j in range(lo, hi):
        row_max = tl.full([R * BLOCK_S], float("-inf"), dtype=tl.float32)
        for t in tl.static_range(SUB):
            start_n = tl.multiple_of(j * BLOCK_K + t * BLOCK_N, BLOCK_N)
            qk = _tile_scores(q, k_base, stride_kn, start_n, offs_n, q_pos, Nk, qk_scale,
                              MASKED, CAUSAL, IEEE_DOT, UPCAST_DOT)
            row_max = tl.maximum(row_max, tl.max(qk, 1))
        v = row_max - lse  # invalid rows carry lse = +inf: they contribute 2^-inf = 0
        for r in tl.static_range(R):
            ir = i0 + r
            key_end_r, _ = _key_range(ir, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, CAUSAL)  # loop-invariant
            if ir < n_qb:
                best = tl.max(tl.where(sub == r, v, float("-inf")), 0)
                val = tl.where(j < tl.cdiv(key_end_r, BLOCK_K), tl.math.exp2(best), float("-inf"))
                tl.store(out_base + ir.to(tl.int64) * stride_oi + j * stride_oj, val)


@triton.jit
def _pool_from_tmax(out_base, stride_oi, stride_oj, i0, n_qb, Nq, Nk, lse, sub, lo, hi, tmax_base, n_tiles,
                    STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, R: tl.constexpr, CAUSAL: tl.constexpr,
                    POOL_CHUNK: tl.constexpr):
    # pass 2 of the one-pass walk: kv-blocks [lo, hi), POOL_CHUNK at a time, from pass 1's tile row maxima
    # (tmax_base + tile * M + row; tiles >= n_tiles were not written and hold no visible key: read as -inf).
    # A [POOL_CHUNK, M] tile per step, so the max over rows is one reduction for POOL_CHUNK blocks and the
    # results leave as one vector store; same operations per block as _pool_blocks, so the same bits
    SUB: tl.constexpr = BLOCK_K // BLOCK_N
    M: tl.constexpr = R * BLOCK_S
    offs_m = tl.arange(0, M)
    for j0 in range(lo, hi, POOL_CHUNK):
        offs_j = j0 + tl.arange(0, POOL_CHUNK)
        row_max = tl.full([POOL_CHUNK, M], float("-inf"), dtype=tl.float32)
        for t in tl.static_range(SUB):
            tile = offs_j * SUB + t
            ok = (tile[:, None] < n_tiles) & (offs_m[None, :] < M)  # full-shape mask (the interpreter wants one)
            t_max = tl.load(tmax_base + tile[:, None] * M + offs_m[None, :], mask=ok, other=float("-inf"))
            row_max = tl.maximum(row_max, t_max)
        v = row_max - lse[None, :]  # invalid rows carry lse = +inf: they contribute 2^-inf = 0
        for r in tl.static_range(R):
            ir = i0 + r
            key_end_r, _ = _key_range(ir, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, CAUSAL)  # loop-invariant
            if ir < n_qb:
                best = tl.max(tl.where((sub == r)[None, :], v, float("-inf")), 1)
                val = tl.where(offs_j < tl.cdiv(key_end_r, BLOCK_K), tl.math.exp2(best), float("-inf"))
                tl.store(out_base + ir.to(tl.int64) * stride_oi + offs_j * stride_oj, val, mask=offs_j < hi)


@triton.jit
def _proxy_scores_fwd(
    Q, K, OUT, TMAX,
    qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kg, stride_kn, stride_kd,
    stride_ob, stride_og, stride_oi, stride_oj,
    G, Nq, Nk, nKb, QH, n_qb, TMAX_TILES,
    STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    R: tl.constexpr, CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr,
    FILL_CHUNK: tl.constexpr, ONE_PASS: tl.constexpr, POOL_CHUNK: tl.constexpr, ACROSS_GROUPS: tl.constexpr,
):
    # one program scores R consecutive q-blocks: their sampled rows form one [R * BLOCK_S, D] tile, so each kv-tile
    # is loaded once for R q-blocks (R = 1: one q-block per program)
    # heavy q-blocks first: under causal the last q-blocks see the most keys. Programs start in grid order (axis 0
    # fastest): by default all programs of one (batch, group), heaviest first, then the next (its keys stay in L2);
    # ACROSS_GROUPS: the heaviest programs of every (batch, group) first (axis 0 = batch * group), so the last
    # group's long programs do not start last
    if ACROSS_GROUPS:
        p = tl.num_programs(1) - 1 - tl.program_id(1)
        pid_bg = tl.program_id(0)
    else:
        p = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bg = tl.program_id(1)
    i0 = p * R
    b = pid_bg // G
    g = pid_bg % G
    b64 = b.to(tl.int64)
    g64 = g.to(tl.int64)

    rows, row_ok, sub = _sampled_rows(i0, n_qb, Nq, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, R)
    # load the proxy query once
    qp = _mean_query(Q, stride_qb, stride_qh, stride_qm, stride_qd, b64, g, QH, rows, row_ok, K.dtype.element_ty,
                     R * BLOCK_S, HEAD_DIM, UPCAST_DOT)
    offs_d = tl.arange(0, HEAD_DIM)

    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + b64 * stride_kb + g64 * stride_kg + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd

    # bottom-right causal: row r sits at position Nk - Nq + r
    q_pos = rows + (Nk - Nq)
    # keys any row sees, the kv-tiles pass 1 walks (n_tiles, also the tiles the ONE_PASS scratch keeps)
    key_end, n_tiles = _program_tiles(p, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N, R, CAUSAL)
    _, fast_end = _key_range(i0, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, CAUSAL)  # keys every row sees

    # ONE_PASS: this program's [n_tiles, R * BLOCK_S] float32 of per-tile row maxima in the packed scratch
    M: tl.constexpr = R * BLOCK_S
    if ONE_PASS:
        tmax_base = _tmax_base(TMAX, pid_bg, p, TMAX_TILES, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q,
                               BLOCK_N, R, CAUSAL)
    else:
        tmax_base = TMAX  # unused

    # pass 1: row max and row sum (ONE_PASS: and each tile's row max)
    m_i = tl.full([M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([M], dtype=tl.float32)
    n_fast_tiles = fast_end // BLOCK_N
    m_i, l_i = _row_stats(m_i, l_i, qp, k_base, stride_kn, 0, n_fast_tiles, offs_n, q_pos, Nk, qk_scale, tmax_base,
                          BLOCK_N, M, False, CAUSAL, IEEE_DOT, UPCAST_DOT, ONE_PASS)
    # diagonal tiles / sequence end: mask
    m_i, l_i = _row_stats(m_i, l_i, qp, k_base, stride_kn, n_fast_tiles, n_tiles, offs_n,
                          q_pos, Nk, qk_scale, tmax_base, BLOCK_N, M, True, CAUSAL, IEEE_DOT, UPCAST_DOT, ONE_PASS)
    lse = tl.where(row_ok & (l_i > 0.0), m_i + tl.math.log2(l_i), float("inf"))
    if ONE_PASS:
        tl.debug_barrier()  # pass 1's scratch stores are visible to every thread of the program

    # pass 2: max-pooled probabilities per visible kv-block
    out_base = OUT + b64 * stride_ob + g64 * stride_og
    n_vis = tl.cdiv(key_end, BLOCK_K)
    if ONE_PASS:
        _pool_from_tmax(out_base, stride_oi, stride_oj, i0, n_qb, Nq, Nk, lse, sub, 0, n_vis, tmax_base, n_tiles,
                        STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, BLOCK_N, BLOCK_K, R, CAUSAL, POOL_CHUNK)
    else:
        n_fast_blocks = fast_end // BLOCK_K
        _pool_blocks(out_base, stride_oi, stride_oj, i0, n_qb, Nq, Nk, lse, sub, qp, k_base, stride_kn, 0,
                     n_fast_blocks, offs_n, q_pos, qk_scale, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, BLOCK_N, BLOCK_K, R,
                     False, CAUSAL, IEEE_DOT, UPCAST_DOT)
        _pool_blocks(out_base, stride_oi, stride_oj, i0, n_qb, Nq, Nk, lse, sub, qp, k_base, stride_kn,
                     n_fast_blocks, n_vis, offs_n, q_pos, qk_scale, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, BLOCK_N,
                     BLOCK_K, R, True, CAUSAL, IEEE_DOT, UPCAST_DOT)

    # blocks past the causal horizon of every q-block of the program: -inf
    for r in tl.static_range(R):
        ir = i0 + r
        if ir < n_qb:
            for j0 in range(n_vis, nKb, FILL_CHUNK):
                offs_j = j0 + tl.arange(0, FILL_CHUNK)
                tl.store(out_base + ir.to(tl.int64) * stride_oi + offs_j * stride_oj,
                         tl.full([FILL_CHUNK], float("-inf"), dtype=tl.float32), mask=offs_j < nKb)


# ------------------------------------------------------------------------------------------------
# split-K variant: the kv-blocks of a q-block are cut into splits of SPLIT_BLOCKS blocks, so that the
# longest q-block (the last one under causal) no longer walks the whole sequence in one program.
# Kernel 1 writes each split's per-row online (max, sum); kernel 2 combines them into the row lse and
# max-pools its split's kv-blocks. Same results as _proxy_scores_fwd up to fp32 summation order.
# ------------------------------------------------------------------------------------------------
@triton.jit
def _row_geometry(i, Nq, Nk, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_Q: tl.constexpr, CAUSAL: tl.constexpr):
    # the sampled rows of q-block i and the key ranges they see (as in _proxy_scores_fwd)
    rows, row_ok, sub = _sampled_rows(i, i + 1, Nq, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, 1)
    q_pos = rows + (Nk - Nq)
    key_end, fast_end = _key_range(i, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, CAUSAL)
    return rows, row_ok, sub, q_pos, key_end, fast_end


@triton.jit
def _proxy_query(
    Q, QP,
    stride_qb, stride_qh, stride_qm, stride_qd,
    G, Nq, QH, n_qb,
    STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    # kernel 0: the proxy query of q-block i (mean of the group's QH heads over its sampled rows, rounded to
    # the dot dtype) -> QP[bg, i, :, :]; rows outside the block are zeros
    i = tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = pid_bg // G
    g = pid_bg % G
    rows, row_ok, sub = _sampled_rows(i, n_qb, Nq, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, 1)
    qp = _mean_query(Q, stride_qb, stride_qh, stride_qm, stride_qd, b.to(tl.int64), g, QH, rows, row_ok,
                     QP.dtype.element_ty, BLOCK_S, HEAD_DIM, UPCAST_DOT)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, BLOCK_S)
    dst = QP + ((pid_bg.to(tl.int64) * n_qb + i) * BLOCK_S + offs_s[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(dst, qp)


@triton.jit
def _load_proxy_query(QP, pid_bg, i, n_qb, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr):
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    src = QP + ((pid_bg.to(tl.int64) * n_qb + i) * BLOCK_S + offs_s[:, None]) * HEAD_DIM + offs_d[None, :]
    return tl.load(src)


@triton.jit
def _proxy_stats_split(
    QP, K, M_PART, L_PART, TMAX,
    qk_scale,
    stride_kb, stride_kg, stride_kn, stride_kd,
    G, Nq, Nk, nKb, n_qb, n_split, SPLIT_BLOCKS, TMAX_TILES,
    STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, ONE_PASS: tl.constexpr,
):
    # kernel 1: online row max / sum of q-block i over the kv-tiles of split s -> M_PART/L_PART[bg, i, s, :];
    # ONE_PASS: also each tile's row max -> q-block i's tiles in the packed scratch (_tmax_base with one q-block per
    # program; kernel 2 then pools without recomputing)
    i = tl.num_programs(0) - 1 - tl.program_id(0)  # heavy q-blocks first
    pid_bg = tl.program_id(1)
    s = tl.program_id(2)
    b = pid_bg // G
    g = pid_bg % G
    b64 = b.to(tl.int64)
    rows, row_ok, sub, q_pos, key_end, fast_end = _row_geometry(i, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, CAUSAL)
    TILES = SPLIT_BLOCKS * (BLOCK_K // BLOCK_N)
    lo = s * TILES
    _, n_tiles = _program_tiles(i, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N, 1, CAUSAL)
    if lo < n_tiles:  # splits past the causal horizon are never read (kernel 2 stops at the horizon)
        qp = _load_proxy_query(QP, pid_bg, i, n_qb, BLOCK_S, HEAD_DIM)
        hi = tl.minimum(lo + TILES, n_tiles)
        n_fast = fast_end // BLOCK_N
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        k_base = K + b64 * stride_kb + g.to(tl.int64) * stride_kg + offs_n[:, None] * stride_kn \
            + offs_d[None, :] * stride_kd
        m_i = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_S], dtype=tl.float32)
        mid = tl.maximum(tl.minimum(hi, n_fast), lo)
        if ONE_PASS:
            tmax_base = _tmax_base(TMAX, pid_bg, i, TMAX_TILES, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q,
                                   BLOCK_N, 1, CAUSAL)
        else:
            tmax_base = TMAX  # unused
        m_i, l_i = _row_stats(m_i, l_i, qp, k_base, stride_kn, lo, mid, offs_n, q_pos, Nk, qk_scale, tmax_base,
                              BLOCK_N, BLOCK_S, False, CAUSAL, IEEE_DOT, UPCAST_DOT, ONE_PASS)
        m_i, l_i = _row_stats(m_i, l_i, qp, k_base, stride_kn, mid, hi, offs_n, q_pos, Nk, qk_scale, tmax_base,
                              BLOCK_N, BLOCK_S, True, CAUSAL, IEEE_DOT, UPCAST_DOT, ONE_PASS)
        offs_s = tl.arange(0, BLOCK_S)
        part = ((pid_bg.to(tl.int64) * n_qb + i) * n_split + s) * BLOCK_S + offs_s
        tl.store(M_PART + part, m_i)
        tl.store(L_PART + part, l_i)


@triton.jit
def _proxy_pool_split(
    QP, K, M_PART, L_PART, TMAX, OUT,
    qk_scale,
    stride_kb, stride_kg, stride_kn, stride_kd,
    stride_ob, stride_og, stride_oi, stride_oj,
    G, Nq, Nk, nKb, n_qb, n_split, SPLIT_BLOCKS, TMAX_TILES,
    STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr, BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr,
    FILL_CHUNK: tl.constexpr, ONE_PASS: tl.constexpr, POOL_CHUNK: tl.constexpr,
):
    # kernel 2: row lse from every visible split's (max, sum), then max-pooled probabilities of the kv-blocks
    # of split s (-inf past the causal horizon); ONE_PASS: from kernel 1's tile row maxima, no score recomputed
    i = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bg = tl.program_id(1)
    s = tl.program_id(2)
    b = pid_bg // G
    g = pid_bg % G
    b64 = b.to(tl.int64)
    g64 = g.to(tl.int64)
    rows, row_ok, sub, q_pos, key_end, fast_end = _row_geometry(i, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, CAUSAL)
    n_vis = tl.cdiv(key_end, BLOCK_K)
    j_lo = s * SPLIT_BLOCKS
    j_hi = tl.minimum(j_lo + SPLIT_BLOCKS, nKb)
    out_row = OUT + b64 * stride_ob + g64 * stride_og + i.to(tl.int64) * stride_oi
    if j_lo < n_vis:
        # combine the visible splits' partial statistics (log2 space)
        offs_s = tl.arange(0, BLOCK_S)
        base = (pid_bg.to(tl.int64) * n_qb + i) * n_split * BLOCK_S + offs_s
        lse = _combine_split_lse(M_PART, L_PART, base, tl.cdiv(n_vis, SPLIT_BLOCKS), row_ok, BLOCK_S)
        v_hi = tl.minimum(j_hi, n_vis)
        out_base = OUT + b64 * stride_ob + g64 * stride_og
        if ONE_PASS:  # the pooling reads kernel 1's tile row maxima: no proxy query, no keys
            _, n_tiles = _program_tiles(i, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N, 1, CAUSAL)
            tmax_base = _tmax_base(TMAX, pid_bg, i, TMAX_TILES, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q,
                                   BLOCK_N, 1, CAUSAL)
            _pool_from_tmax(out_base, stride_oi, stride_oj, i, n_qb, Nq, Nk, lse, sub, j_lo, v_hi, tmax_base, n_tiles,
                            STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, BLOCK_N, BLOCK_K, 1, CAUSAL, POOL_CHUNK)
        else:
            qp = _load_proxy_query(QP, pid_bg, i, n_qb, BLOCK_S, HEAD_DIM)
            offs_n = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, HEAD_DIM)
            k_base = K + b64 * stride_kb + g64 * stride_kg + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
            mid = tl.maximum(tl.minimum(v_hi, fast_end // BLOCK_K), j_lo)  # end of the mask-free blocks
            _pool_blocks(out_base, stride_oi, stride_oj, i, n_qb, Nq, Nk, lse, sub, qp, k_base, stride_kn, j_lo, mid,
                         offs_n, q_pos, qk_scale, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, BLOCK_N, BLOCK_K, 1, False,
                         CAUSAL, IEEE_DOT, UPCAST_DOT)
            _pool_blocks(out_base, stride_oi, stride_oj, i, n_qb, Nq, Nk, lse, sub, qp, k_base, stride_kn, mid, v_hi,
                         offs_n, q_pos, qk_scale, STRIDE, N_SAMPLED, BLOCK_S, BLOCK_Q, BLOCK_N, BLOCK_K, 1, True,
                         CAUSAL, IEEE_DOT, UPCAST_DOT)
    # blocks of this split past the causal horizon: -inf
    f_lo = tl.maximum(j_lo, n_vis)
    for j0 in range(f_lo, j_hi, FILL_CHUNK):
        offs_j = j0 + tl.arange(0, FILL_CHUNK)
        tl.store(out_row + offs_j * stride_oj, tl.full([FILL_CHUNK], float("-inf"), dtype=tl.float32),
                 mask=offs_j < j_hi)
