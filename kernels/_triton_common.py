"""Helpers shared by the kernels: ``@triton.jit`` code of the planning kernels (``proxy_scores``,
``last_block_mass``, ``topk_compact``, ``topk_rank``) and the launchers' tile-size arithmetic."""

from __future__ import annotations

import triton
import triton.language as tl


#: Largest scratch (MiB) a planning kernel's automatic rule spends on walking the keys once instead of twice
#: (``proxy_scores`` and ``last_block_mass`` keep per-tile statistics there); beyond it they walk twice. 1.5 GiB
#: takes the packed proxy-score scratch of the Llama-3.1-8B shape at 512K (1024.5 MiB) and of the Qwen2.5-7B shape
#: at 256K (1025 MiB), where one walk was ~1.9x faster on an H200 (23.1 vs 44.5 ms, 2026-12-03), but not 1M (4 GiB)
ONE_PASS_MAX_SCRATCH_MB = 1536


def one_pass_for(scratch_bytes: int, override: bool | None = None) -> bool:
    """Whether a planning kernel walks the keys once: ``override`` (a config's ``one_pass``) when given, else
    whenever its per-tile scratch of ``scratch_bytes`` fits in ``ONE_PASS_MAX_SCRATCH_MB``."""
    return scratch_bytes <= ONE_PASS_MAX_SCRATCH_MB << 20 if override is None else override


def pool_chunk_for(rows: int) -> int:
    """kv-blocks a one-pass kernel's second stage handles per step: a ``[chunk, rows]`` float32 tile of 4,096
    values (16..128 blocks), so the reduction over the rows is one per chunk instead of one per kv-block
    (``proxy_scores``' pooling, ``last_block_mass``' block sums)."""
    return max(16, min(128, 4096 // rows))


def pow2_at_least(n: int, floor: int = 16) -> int:
    """The smallest power of two >= ``n``, at least ``floor`` (``tl.arange`` extents are powers of two)."""
    return max(floor, 1 << max(0, (n - 1).bit_length()))


@triton.jit
def _head_row(pid, n, Hq, HPG):
    """``(b, h, i, g)``, int64, of program ``pid`` over the ``B * n * Hq`` (sequence, q-block row, head) rows,
    heads fastest: the heads of one score group (``g = h // HPG``), which read the same group row, run side by
    side. int64 because row offsets of a 1M-token layout exceed 2^31 once B > 1."""
    pid = pid.to(tl.int64)
    h = pid % Hq
    bi = pid // Hq
    return bi // n, h, bi % n, h // HPG


@triton.jit
def _kept_in_tile(rank, count, valid, kept_before):
    """One tile of a stable compaction by rank: ``(keep, cs, n)``: the lanes ranked below ``count``, the kept
    lanes up to and including each lane (``kept_before`` from earlier tiles counted in) and the tile's kept total."""
    keep = (rank < count) & valid
    k32 = keep.to(tl.int32)
    return keep, tl.cumsum(k32, 0) + kept_before, tl.sum(k32, 0)


@triton.jit
def _dot(a, b, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # UPCAST_DOT: interpreter-only workaround (its tl.dot mishandles bf16); exact, since products of
    # 16-bit floats are exact in fp32
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE_DOT:
        res = tl.dot(a, b, input_precision="ieee")
    else:
        res = tl.dot(a, b)
    return res


@triton.jit
def _tile_scores(q, k_base, stride_kn, start_n, offs_n, q_pos, Nk, qk_scale,
                 MASKED: tl.constexpr, CAUSAL: tl.constexpr, IEEE_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # scaled scores (log2 units) of the rows against keys [start_n, start_n + BLOCK_N)
    offs_kn = start_n + offs_n
    if MASKED:
        k_ok = offs_kn < Nk
        k = tl.load(k_base + start_n * stride_kn, mask=k_ok[:, None], other=0.0)
    else:
        k = tl.load(k_base + start_n * stride_kn)
    qk = _dot(q, tl.trans(k), IEEE_DOT, UPCAST_DOT) * qk_scale
    if MASKED:
        ok = k_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_kn[None, :] <= q_pos[:, None])
        qk = tl.where(ok, qk, float("-inf"))
    return qk


@triton.jit
def _combine_split_lse(M_PART, L_PART, part, n_split, row_ok, BLOCK: tl.constexpr):
    """Row lse (log2 units) from ``n_split`` partial online-softmax statistics stored ``BLOCK`` apart from
    ``part`` (max in ``M_PART``, sum in ``L_PART``); ``+inf`` for invalid rows and rows that saw no key."""
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for s in range(0, n_split):
        m = tl.maximum(m, tl.load(M_PART + part + s * BLOCK))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, n_split):
        l_sum += tl.load(L_PART + part + s * BLOCK) * tl.math.exp2(tl.load(M_PART + part + s * BLOCK) - m_safe)
    return tl.where(row_ok & (l_sum > 0.0), m_safe + tl.math.log2(l_sum), float("inf"))
