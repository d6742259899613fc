"""Triton kernels of the ``dynamic`` budget's input (``@triton.jit`` code only; see ``op.py``).

For every real query head, the exact softmax attention of the last ``M_ROWS = min(block_q, Nq)`` query
rows against all keys, averaged over those rows and summed per kv-block. The keys are split into ranges
of whole kv-blocks so that ``B * Hq * n_split`` programs share the work (flash-decoding style):

* ``_lbm_row_stats``: program (b*Hq + h, split) -> per-row max and sum of ``exp2(s)`` over its key range
  (online, fp32, log2 space) -> ``M_PART`` / ``L_PART`` ``[B, Hq, n_split, BLOCK_M]``;
* ``_lbm_block_mass``: same grid; combines every split's (max, sum) into the row lse, recomputes the
  scores of its key range and writes ``sum_rows sum_keys 2^(s - lse) / M_ROWS`` per kv-block.

With ``ONE_PASS`` the keys are walked once: ``_lbm_row_stats`` also stores, per kv-tile and row, the online
max after the tile and the tile's sum of ``2^(s - that max)`` (``T_MAX`` / ``T_SUM`` ``[B * Hq, tiles,
BLOCK_M]`` float32), and ``_lbm_block_mass`` sums ``T_SUM * 2^(T_MAX - lse)`` over a block's tiles and rows
instead of recomputing the scores (the same mass up to fp32 rounding), ``CHUNK`` kv-blocks per step (one
reduction over the rows and one vector store per chunk).

K/V head of query head ``h`` is ``h // GROUP`` (read through strides, never repeated). The grid puts
heads on its fast axis, so the heads sharing one key range run together and share K in L2.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_common import _combine_split_lse, _tile_scores


@triton.jit
def _setup(Q, K, stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
           H, GROUP, Nq, Nk, M_ROWS, SPLIT_N,
           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
           SKIP_Q: tl.constexpr):
    # shared prologue: this program's head, rows, q tile (SKIP_Q: 0 instead, the caller computes no score), K
    # pointers and key range
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    row_ok = offs_m < M_ROWS
    rows = Nq - M_ROWS + offs_m
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)

    # load q once (padding rows read as 0)
    if SKIP_Q:
        q = 0.0
    else:
        q_ptrs = (Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None].to(tl.int64) * stride_qm
                  + offs_d[None, :] * stride_qd)
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = (K + b64 * stride_kb + (h // GROUP).to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn
              + offs_d[None, :] * stride_kd)

    # bottom-right causal: row r sits at position Nk - Nq + r; the first of the rows sees keys < fast_end
    q_pos = rows + (Nk - Nq)
    k_lo = split * SPLIT_N
    k_hi = tl.minimum(k_lo + SPLIT_N, Nk)
    if CAUSAL:
        fast_end = tl.minimum(Nk - M_ROWS + 1, k_hi)
    else:
        fast_end = k_hi
    fast_hi = k_lo + tl.maximum(fast_end - k_lo, 0) // BLOCK_N * BLOCK_N  # end of the mask-free tiles
    return pid_bh, split, row_ok, q, k_base, q_pos, offs_n, k_lo, k_hi, fast_hi


@triton.jit
def _stats_tiles(m_i, l_i, q, k_base, stride_kn, lo, hi, offs_n, q_pos, Nk, qk_scale, t_base,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                 IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, ONE_PASS: tl.constexpr,
                 T_MAX, T_SUM):
    # online row max / row sum over the kv-tiles starting at [lo, hi); ONE_PASS: each tile's (max after it, sum of
    # 2^(s - that max)) -> T_MAX / T_SUM at t_base + (tile index) * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    for n0 in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(n0, BLOCK_N)
        qk = _tile_scores(q, k_base, stride_kn, start_n, offs_n, q_pos, Nk, qk_scale,
                          MASKED, CAUSAL, IEEE_DOT, UPCAST_DOT)
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED:
            m_ij = tl.where(m_ij == float("-inf"), 0.0, m_ij)  # nothing seen yet: p = 0, alpha = 0
        p = tl.math.exp2(qk - m_ij[:, None])
        p_sum = tl.sum(p, 1)
        if ONE_PASS:
            t = t_base + (n0 // BLOCK_N) * BLOCK_M + offs_m
            tl.store(T_MAX + t, m_ij)
            tl.store(T_SUM + t, p_sum)
        l_i = l_i * tl.math.exp2(m_i - m_ij) + p_sum
        m_i = m_ij
    return m_i, l_i


@triton.jit
def _lbm_row_stats(
    Q, K, M_PART, L_PART, T_MAX, T_SUM,
    qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    H, GROUP, Nq, Nk, M_ROWS, SPLIT_N, N_SPLIT, N_TILES,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, ONE_PASS: tl.constexpr,
):
    pid_bh, split, row_ok, q, k_base, q_pos, offs_n, k_lo, k_hi, fast_hi = _setup(
        Q, K, stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
        H, GROUP, Nq, Nk, M_ROWS, SPLIT_N, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, False)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    t_base = pid_bh.to(tl.int64) * N_TILES * BLOCK_M  # this head's tiles in T_MAX / T_SUM
    # keys every row sees: no mask
    m_i, l_i = _stats_tiles(m_i, l_i, q, k_base, stride_kn, k_lo, fast_hi, offs_n, q_pos, Nk, qk_scale, t_base,
                            BLOCK_M, BLOCK_N, False, CAUSAL, IEEE_DOT, UPCAST_DOT, ONE_PASS, T_MAX, T_SUM)
    # diagonal tiles / sequence end: mask
    m_i, l_i = _stats_tiles(m_i, l_i, q, k_base, stride_kn, fast_hi, k_hi, offs_n, q_pos, Nk, qk_scale, t_base,
                            BLOCK_M, BLOCK_N, True, CAUSAL, IEEE_DOT, UPCAST_DOT, ONE_PASS, T_MAX, T_SUM)

    offs_m = tl.arange(0, BLOCK_M)
    part = (pid_bh.to(tl.int64) * N_SPLIT + split) * BLOCK_M + offs_m
    tl.store(M_PART + part, m_i)
    tl.store(L_PART + part, l_i)


@triton.jit
def _block_sums(mass_row, lse, q, k_base, stride_kn, lo, hi, offs_n, q_pos, Nk, qk_scale, inv_rows,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # two passes: kv-blocks [lo, hi), the scores recomputed; sum over the block's keys and the rows of
    # 2^(s - lse), divided by the row count
    SUB: tl.constexpr = BLOCK_K // BLOCK_N
    for j in range(lo, hi):
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for t in tl.static_range(SUB):
            start_n = tl.multiple_of(j * BLOCK_K + t * BLOCK_N, BLOCK_N)
            qk = _tile_scores(q, k_base, stride_kn, start_n, offs_n, q_pos, Nk, qk_scale,
                              MASKED, CAUSAL, IEEE_DOT, UPCAST_DOT)
            # padding rows carry lse = +inf: 2^-inf = 0
            acc += tl.sum(tl.math.exp2(qk - lse[:, None]), 0)
        tl.store(mass_row + j, tl.sum(acc, 0) * inv_rows)


@triton.jit
def _block_sums_from_stats(mass_row, lse, lo, hi, inv_rows, T_MAX, T_SUM, t_base, k_hi,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           CHUNK: tl.constexpr):
    # one pass: kv-blocks [lo, hi), CHUNK at a time, from the stored tile statistics: sum_rows T_SUM * 2^(T_MAX -
    # lse) over the block's tiles that start before k_hi (the only ones written), divided by the row count. A
    # [CHUNK, BLOCK_M] tile per step: one reduction over the rows and one vector store per chunk
    SUB: tl.constexpr = BLOCK_K // BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    for j0 in range(lo, hi, CHUNK):
        offs_j = j0 + tl.arange(0, CHUNK)
        acc = tl.zeros([CHUNK, BLOCK_M], dtype=tl.float32)
        for t in tl.static_range(SUB):
            written = (offs_j * BLOCK_K + t * BLOCK_N < k_hi) & (offs_j < hi)
            ok = written[:, None] & (offs_m[None, :] < BLOCK_M)  # full-shape mask (the interpreter wants one)
            ti = t_base + (offs_j * SUB + t)[:, None] * BLOCK_M + offs_m[None, :]
            t_max = tl.load(T_MAX + ti, mask=ok, other=0.0)
            t_sum = tl.load(T_SUM + ti, mask=ok, other=0.0)
            acc += t_sum * tl.math.exp2(t_max - lse[None, :])  # padding rows carry lse = +inf: 2^-inf = 0
        tl.store(mass_row + offs_j, tl.sum(acc, 1) * inv_rows, mask=offs_j < hi)


@triton.jit
def _lbm_block_mass(
    Q, K, M_PART, L_PART, T_MAX, T_SUM, MASS,
    qk_scale, inv_rows,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_mb, stride_mh,
    H, GROUP, Nq, Nk, M_ROWS, SPLIT_N, N_SPLIT, N_TILES,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr, ONE_PASS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_bh, split, row_ok, q, k_base, q_pos, offs_n, k_lo, k_hi, fast_hi = _setup(
        Q, K, stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
        H, GROUP, Nq, Nk, M_ROWS, SPLIT_N, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL,
        ONE_PASS)  # one pass: the block sums read the tile statistics, not q

    # combine every split's row max / row sum into the row lse
    offs_m = tl.arange(0, BLOCK_M)
    part = pid_bh.to(tl.int64) * N_SPLIT * BLOCK_M + offs_m
    lse = _combine_split_lse(M_PART, L_PART, part, N_SPLIT, row_ok, BLOCK_M)

    # per kv-block mass over this split's key range
    b = pid_bh // H
    h = pid_bh % H
    mass_row = MASS + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
    j_lo = k_lo // BLOCK_K
    j_hi = tl.cdiv(k_hi, BLOCK_K)
    if ONE_PASS:
        t_base = pid_bh.to(tl.int64) * N_TILES * BLOCK_M
        _block_sums_from_stats(mass_row, lse, j_lo, j_hi, inv_rows, T_MAX, T_SUM, t_base, k_hi,
                               BLOCK_M, BLOCK_N, BLOCK_K, CHUNK)
    else:
        j_fast = fast_hi // BLOCK_K  # blocks wholly inside the mask-free key range
        _block_sums(mass_row, lse, q, k_base, stride_kn, j_lo, j_fast, offs_n, q_pos, Nk, qk_scale, inv_rows,
                    BLOCK_N, BLOCK_K, False, CAUSAL, IEEE_DOT, UPCAST_DOT)
        _block_sums(mass_row, lse, q, k_base, stride_kn, j_fast, j_hi, offs_n, q_pos, Nk, qk_scale, inv_rows,
                    BLOCK_N, BLOCK_K, True, CAUSAL, IEEE_DOT, UPCAST_DOT)
