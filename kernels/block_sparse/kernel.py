"""Triton block-sparse FlashAttention-2 forward (``@triton.jit`` code only; see ``op.py``).

One program computes one ``BLOCK_M`` tile of query rows for one (batch, query head). It loads the q
tile once, then walks the kept kv-blocks of its layout row (``kv_indices[b, h, i, :kv_counts[b, h, i]]``)
in two phases:

* fast phase: the leading kept blocks that lie entirely below the causal diagonal of every row in the
  tile and entirely inside the sequence: no mask at all;
* masked phase: the remaining blocks (diagonal / sequence end / anything the fast test rejected):
  causal + ragged mask, fully-masked tiles skipped.

With ``ONE_LOOP`` (``KernelConfig.one_loop``) the program instead walks all kept tiles in one loop and
applies the mask only to tiles that reach past the first row's position or the sequence end (a
warp-uniform branch), saving the second loop's pipeline fill.

Online softmax runs in fp32 in log2 space (``log2(e)`` folded into ``qk_scale``). K/V of query head
``h`` come from KV head ``h // GROUP`` through strides (never repeated in memory).

K/V tiles are loaded with pointer loads (``TMA == 0``) or with Hopper TMA through tensor descriptors
(``tl.make_tensor_descriptor`` / ``triton.tools.tensor_descriptor.TensorDescriptor``, both in triton
>= 3.4):

* ``TMA == 1`` (device-side): each program builds descriptors over its own KV head, shape
  ``[k_len, HEAD_DIM]``, so rows past the sequence end are zero-filled by the TMA unit;
* ``TMA == 2`` (host-side, ``K_DESC`` / ``V_DESC``): one descriptor over the 2-D view
  ``[B * Hkv * Nk, HEAD_DIM]`` of K/V (B, H, N strides collapse), loaded at row ``(b * Hkv + kv_head) * Nk + start_n``.
  Rows past this head's ``k_len`` (padding, the next head, or zero fill past the tensor end) only
  occur in masked tiles, where their scores are ``-inf``; ``TMA_ZERO_V`` additionally zeroes those V
  rows (set when they can exist: ``k_lens`` given or ``Nk % BLOCK_N != 0``) so that garbage
  (NaN / inf) in them cannot leak through ``0 * NaN``.
"""

from __future__ import annotations

import triton
import triton.language as tl

_LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def _seq_len(LENS, b, N, HAS_LENS: tl.constexpr):
    # per-sequence valid length, clamped to [0, N]
    if HAS_LENS:
        n = tl.load(LENS + b).to(tl.int32)
        n = tl.minimum(tl.maximum(n, 0), N)
    else:
        n = N
    return n


@triton.jit
def _dot(a, b, acc, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # UPCAST_DOT: interpreter-only workaround (its tl.dot multiplies bf16 raw bits); exact, since
    # products of 16-bit floats are exact in fp32
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE_DOT:
        res = tl.dot(a, b, acc, input_precision="ieee")
    else:
        res = tl.dot(a, b, acc)
    return res


@triton.jit
def _first_masked_slot(idx_row, stride_is, count, fast_end, nKb, MAX_K,
                       BLOCK_K: tl.constexpr, IDX_CHUNK: tl.constexpr):
    # length of the leading run of kept blocks that need no mask: block j is mask-free iff
    # (j + 1) * BLOCK_K <= fast_end. Robust to any order (the contract says ascending).
    # The first chunk is loaded masked by the row extent MAX_K (padding slots are in bounds, their
    # values are ignored below), not by count: its load does not wait for the count load.
    offs_s = tl.arange(0, IDX_CHUNK)
    j = tl.load(idx_row + offs_s * stride_is, mask=offs_s < MAX_K, other=0)
    j = tl.minimum(tl.maximum(j, 0), nKb - 1)
    bad = (offs_s < count) & ((j + 1) * BLOCK_K > fast_end)
    n_fast = tl.minimum(count, tl.min(tl.where(bad, offs_s, count), 0))
    for s0 in range(IDX_CHUNK, count, IDX_CHUNK):
        offs_s = s0 + tl.arange(0, IDX_CHUNK)
        in_row = offs_s < count
        j = tl.load(idx_row + offs_s * stride_is, mask=in_row, other=0)
        j = tl.minimum(tl.maximum(j, 0), nKb - 1)
        bad = in_row & ((j + 1) * BLOCK_K > fast_end)
        n_fast = tl.minimum(n_fast, tl.min(tl.where(bad, offs_s, count), 0))
    return n_fast


@triton.jit
def _masked_tile(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, kv_row0, start_n,
                 k_len, q_pos, offs_n, qk_scale, apply_mask,
                 CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr,
                 TMA: tl.constexpr, TMA_ZERO_V: tl.constexpr):
    # one kv tile with masked loads (rows >= k_len read as 0) and, when `apply_mask`, the causal / length
    # mask on the scores; rows that saw no key yet keep m = -inf and are shifted by 0 (p = 0, alpha = 0)
    offs_kn = start_n + offs_n
    k_ok = offs_kn < k_len
    if TMA:
        k = k_base.load([kv_row0 + start_n, 0])  # rows >= k_len: scores masked below
    else:
        k = tl.load(k_base + start_n * stride_kn, mask=k_ok[:, None], other=0.0)
    qk = _dot(q, tl.trans(k), None, IEEE_DOT, UPCAST_DOT)
    qk = qk * qk_scale
    if apply_mask:
        ok = k_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_kn[None, :] <= q_pos[:, None])
        qk = tl.where(ok, qk, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_ij == float("-inf"), 0.0, m_ij)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if TMA:
        v = v_base.load([kv_row0 + start_n, 0])
        if TMA_ZERO_V:  # p = 0 there, but 0 * (NaN / inf garbage) would not be 0
            v = tl.where(k_ok[:, None], v, tl.zeros_like(v))
    else:
        v = tl.load(v_base + start_n * stride_vn, mask=k_ok[:, None], other=0.0)
    acc = _dot(p.to(v.dtype), v, acc, IEEE_DOT, UPCAST_DOT)
    return acc, l_i, m_ij


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q,
                    k_base, v_base, stride_kn, stride_vn, kv_row0,
                    idx_row, stride_is, lo, hi, nKb,
                    k_len, q_pos, last_key, fast_end, offs_n, qk_scale,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, POS_SCALE: tl.constexpr,
                    IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr,
                    TMA: tl.constexpr, TMA_ZERO_V: tl.constexpr):
    # iteration `it` = kv sub-tile (it % SUB) of kept slot (it // SUB)
    # TMA: k_base / v_base are tensor descriptors, tile rows start at kv_row0 + start_n
    for it in range(lo, hi):
        # kv block index: one scalar load per iteration (cached across the SUB sub-tiles)
        j = tl.load(idx_row + (it // SUB) * stride_is)
        j = tl.minimum(tl.maximum(j, 0), nKb - 1)
        start_n = j * BLOCK_K + (it % SUB) * BLOCK_N
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if MASKED == 2:
            # one loop for every kept tile: the causal / length mask only where a key can be invisible to a
            # row (a warp-uniform branch on this tile's position), so the pipeline runs through the diagonal
            acc, l_i, m_i = _masked_tile(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, kv_row0, start_n,
                                         k_len, q_pos, offs_n, qk_scale, start_n + BLOCK_N > fast_end,
                                         CAUSAL, IEEE_DOT, UPCAST_DOT, TMA, TMA_ZERO_V)
        elif MASKED:
            # diagonal / sequence-end block: mask, skip tiles no row can see
            if start_n <= last_key:
                acc, l_i, m_i = _masked_tile(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, kv_row0,
                                             start_n, k_len, q_pos, offs_n, qk_scale, True,
                                             CAUSAL, IEEE_DOT, UPCAST_DOT, TMA, TMA_ZERO_V)
        else:
            # steady state: no mask
            if TMA:
                k = k_base.load([kv_row0 + start_n, 0])
            else:
                k = tl.load(k_base + start_n * stride_kn)
            qk = _dot(q, tl.trans(k), None, IEEE_DOT, UPCAST_DOT)
            if POS_SCALE:
                m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                qk = qk * qk_scale - m_ij[:, None]
            else:
                qk = qk * qk_scale
                m_ij = tl.maximum(m_i, tl.max(qk, 1))
                qk = qk - m_ij[:, None]
            p = tl.math.exp2(qk)
            alpha = tl.math.exp2(m_i - m_ij)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if TMA:
                v = v_base.load([kv_row0 + start_n, 0])
            else:
                v = tl.load(v_base + start_n * stride_vn)
            acc = _dot(p.to(v.dtype), v, acc, IEEE_DOT, UPCAST_DOT)
            m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _tile_of_program(M_CHUNK: tl.constexpr):
    # (batch * Hq + head, q-tile) of this program. The grid is (B * Hq, n_m) and programs start in linear order
    # (axis 0 fastest). Heavy rows first: the last q-tiles (most kept blocks under causal) get the lowest ids.
    # M_CHUNK == 0: all heads of one q-tile, then the next q-tile. M_CHUNK > 0: chunks of M_CHUNK q-tiles, heaviest
    # chunk first; inside a chunk head after head (the query heads of one KV group next to each other), each
    # head's q-tiles of the chunk together, so that the programs running at once read the K/V of few KV heads
    # (more L2 hits when the kept blocks of neighbouring q-tiles and of a group's heads overlap).
    n_bh = tl.num_programs(0)
    n_m = tl.num_programs(1)
    if M_CHUNK == 0:
        pid_bh = tl.program_id(0)
        pid_m = n_m - 1 - tl.program_id(1)
    else:
        lin = tl.program_id(1) * n_bh + tl.program_id(0)
        chunk = lin // (M_CHUNK * n_bh)
        first = chunk * M_CHUNK
        size = tl.minimum(n_m - first, M_CHUNK)  # the last chunk can be short
        w = lin - first * n_bh
        pid_bh = w // size
        pid_m = n_m - 1 - first - (w - pid_bh * size)
    return pid_bh, pid_m


@triton.jit
def _block_sparse_attn_fwd(
    Q, K, V, O, LSE, KV_COUNTS, KV_INDICES, Q_LENS, K_LENS, K_DESC, V_DESC,
    qk_scale,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_cb, stride_ch, stride_cq,
    stride_ib, stride_ih, stride_iq, stride_is,
    stride_lb, stride_lh,
    H, GROUP, Hkv, Nq, Nk, nKb, MAX_K,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_Q_LENS: tl.constexpr, HAS_K_LENS: tl.constexpr,
    RETURN_LSE: tl.constexpr, POS_SCALE: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr,
    IDX_CHUNK: tl.constexpr, TMA: tl.constexpr, TMA_ZERO_V: tl.constexpr,
    ONE_LOOP: tl.constexpr, M_CHUNK: tl.constexpr,
):
    pid_bh, pid_m = _tile_of_program(M_CHUNK)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = hk.to(tl.int64)

    q_len = _seq_len(Q_LENS, b, Nq, HAS_Q_LENS)
    k_len = _seq_len(K_LENS, b, Nk, HAS_K_LENS)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    # load q once (padded rows read as 0)
    q_ptrs = Q + b64 * stride_qb + h64 * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m < q_len)[:, None], other=0.0)

    # loop-invariant K/V pointers of KV head h // GROUP; per tile only a scalar offset is added
    k_base = K + b64 * stride_kb + hk64 * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_base = V + b64 * stride_vb + hk64 * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    if TMA == 1:
        # device-side descriptors over this KV head only: rows >= k_len read as 0
        k_rows = tl.maximum(k_len, 1)
        k_src = tl.make_tensor_descriptor(K + b64 * stride_kb + hk64 * stride_kh, shape=[k_rows, HEAD_DIM],
                                          strides=[stride_kn, 1], block_shape=[BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(V + b64 * stride_vb + hk64 * stride_vh, shape=[k_rows, HEAD_DIM],
                                          strides=[stride_vn, 1], block_shape=[BLOCK_N, HEAD_DIM])
        kv_row0 = 0
    elif TMA == 2:
        # host-side descriptors over the 2-D view [B * Hkv * Nk, HEAD_DIM]
        k_src = K_DESC
        v_src = V_DESC
        kv_row0 = (b * Hkv + hk) * Nk
    else:
        k_src = k_base
        v_src = v_base
        kv_row0 = 0

    # layout row of this tile
    qb = start_m // BLOCK_Q
    count = tl.load(KV_COUNTS + b64 * stride_cb + h * stride_ch + qb * stride_cq)
    count = tl.minimum(tl.maximum(count, 0), MAX_K)
    count = tl.where(start_m < q_len, count, 0)  # tile entirely in the padding: nothing to do
    idx_row = KV_INDICES + b64 * stride_ib + h * stride_ih + qb * stride_iq

    # bottom-right causal: row r sits at absolute position k_len - q_len + r
    q_pos = offs_m + (k_len - q_len)
    if CAUSAL:
        first_pos = start_m + (k_len - q_len)
        last_pos = tl.minimum(start_m + BLOCK_M, q_len) - 1 + (k_len - q_len)
        fast_end = tl.minimum(first_pos + 1, k_len)
        last_key = tl.minimum(last_pos, k_len - 1)
    else:
        fast_end = k_len
        last_key = k_len - 1

    SUB: tl.constexpr = BLOCK_K // BLOCK_N
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if ONE_LOOP:
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, kv_row0,
                                        idx_row, stride_is, 0, count * SUB, nKb,
                                        k_len, q_pos, last_key, fast_end, offs_n, qk_scale,
                                        BLOCK_N, BLOCK_K, SUB, 2, CAUSAL, POS_SCALE, IEEE_DOT, UPCAST_DOT,
                                        TMA != 0, TMA_ZERO_V)
    else:
        n_fast = _first_masked_slot(idx_row, stride_is, count, fast_end, nKb, MAX_K, BLOCK_K, IDX_CHUNK)
        # blocks below the diagonal and inside the sequence: no mask
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, kv_row0,
                                        idx_row, stride_is, 0, n_fast * SUB, nKb,
                                        k_len, q_pos, last_key, fast_end, offs_n, qk_scale,
                                        BLOCK_N, BLOCK_K, SUB, 0, CAUSAL, POS_SCALE, IEEE_DOT, UPCAST_DOT,
                                        TMA != 0, TMA_ZERO_V)
        # diagonal block / sequence end: mask
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, kv_row0,
                                        idx_row, stride_is, n_fast * SUB, count * SUB, nKb,
                                        k_len, q_pos, last_key, fast_end, offs_n, qk_scale,
                                        BLOCK_N, BLOCK_K, SUB, 1, CAUSAL, POS_SCALE, IEEE_DOT, UPCAST_DOT,
                                        TMA != 0, TMA_ZERO_V)

    # epilogue: rows that saw no key (or are padding) -> 0 and lse -inf
    row_ok = (offs_m < q_len) & (l_i > 0.0)
    l_safe = tl.where(row_ok, l_i, 1.0)
    out = acc / l_safe[:, None]
    out = tl.where(row_ok[:, None], out, 0.0)
    o_ptrs = O + b64 * stride_ob + h64 * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m < Nq)[:, None])
    if RETURN_LSE:
        lse = tl.where(row_ok, (m_i + tl.math.log2(l_safe)) * _LN2, float("-inf"))
        tl.store(LSE + b64 * stride_lb + h64 * stride_lh + offs_m, lse, mask=offs_m < Nq)
