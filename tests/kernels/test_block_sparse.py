"""Tests of the Triton block-sparse attention kernel (``kernels/block_sparse``).

Without a GPU the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 must be set before the
kernel module is imported), so sizes stay small. Every output buffer is NaN-poisoned before the call.
Accuracy rule: the kernel's max error against a float64 reference must be at most 2x the error of
plain torch computing the same thing in the input dtype (plus a tiny absolute floor).
"""

from __future__ import annotations

import os

if not os.environ.get("TRITON_INTERPRET") and not __import__("torch").cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import math
import zlib
from dataclasses import FrozenInstanceError, dataclass, replace
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from sparsekit.kernels.block_sparse import (
    CAPABILITIES,
    block_sparse_attention,
    block_sparse_attention_naive,
    not_supported_reasons,
)
from sparsekit.kernels.block_sparse import op as bs_op
from sparsekit.kernels.block_sparse.op import KernelConfig

DEVICE = "cuda" if torch.cuda.is_available() and not bs_op._INTERPRET else "cpu"


@pytest.fixture(autouse=True)
def _fresh_call_cache():
    """Tests patch the launcher's checks (interpreter flag, TMA API, index chunk): start each with no prepared call."""
    bs_op.clear_call_cache()
    yield
    bs_op.clear_call_cache()


def floor(dtype, ref):
    """Absolute floor of the accuracy rule: a quarter of one rounding step of ``dtype`` at the
    reference's magnitude, plus 1e-6. (With few keys per row the output is O(1) and both errors are
    about one output rounding; the kernel additionally rounds P to the input dtype, like FA2.)"""
    return torch.finfo(dtype).eps / 4 * max(ref.abs().max().item(), 1.0) + 1e-6


# --------------------------------------------------------------------------------------------------
# helpers


def _lens(lens, n, B):
    return [n] * B if lens is None else [int(x) for x in lens]


def make_layout(B, Hq, Nq, Nk, bq, bk, *, causal, q_lens=None, k_lens=None, kind="random", gen=None,
                extra_pad=1):
    """Layout (kv_counts int32 [B,Hq,nQb], kv_indices int32 [B,Hq,nQb,max_k]).

    kind: "random" (random count and ascending blocks within the causal range, always with the
    diagonal block), "full" (every visible block), "diag" (only the diagonal block), "random_empty"
    (random, with some rows kept empty). Padding entries are garbage (never read).
    """
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    ql, kl = _lens(q_lens, Nq, B), _lens(k_lens, Nk, B)
    max_k = nKb + extra_pad
    counts = torch.zeros(B, Hq, nQb, dtype=torch.int32)
    # garbage padding: huge, negative and in-range values
    idx = torch.randint(-(10**6), 10**6, (B, Hq, nQb, max_k), generator=gen, dtype=torch.int64).to(torch.int32)
    for b in range(B):
        nkb_b = max(1, math.ceil(kl[b] / bk))
        for i in range(nQb):
            r_last = min((i + 1) * bq, max(ql[b], 1)) - 1
            if causal:
                last_pos = kl[b] - ql[b] + r_last
                last = min(last_pos // bk, nkb_b - 1) if last_pos >= 0 else -1
            else:
                last = nkb_b - 1
            for h in range(Hq):
                if last < 0:  # no visible key: keep one (fully masked) block anyway
                    sel = [int(torch.randint(0, nKb, (1,), generator=gen))]
                elif kind == "full":
                    sel = list(range(last + 1))
                elif kind == "diag":
                    sel = [last]
                else:
                    n = int(torch.randint(1, last + 2, (1,), generator=gen))
                    sel = sorted(set(torch.randperm(last + 1, generator=gen)[:n].tolist()) | {last})
                    if kind == "random_empty" and torch.rand((), generator=gen) < 0.3:
                        sel = []
                counts[b, h, i] = len(sel)
                if sel:
                    idx[b, h, i, : len(sel)] = torch.tensor(sel, dtype=torch.int32)
    return counts, idx


def dense_mask(B, Hq, Nq, Nk, bq, bk, counts, idx, *, causal, q_lens=None, k_lens=None, use_layout=True):
    """Element mask [B, Hq, Nq, Nk]: layout blocks & lengths & bottom-right causal."""
    ql, kl = _lens(q_lens, Nq, B), _lens(k_lens, Nk, B)
    rows = torch.arange(Nq)
    keys = torch.arange(Nk)
    mask = torch.zeros(B, Hq, Nq, Nk, dtype=torch.bool)
    for b in range(B):
        ok = (rows[:, None] < ql[b]) & (keys[None, :] < kl[b])
        if causal:
            ok &= keys[None, :] <= (kl[b] - ql[b] + rows)[:, None]
        if use_layout:
            for h in range(Hq):
                blk = torch.zeros(math.ceil(Nq / bq), math.ceil(Nk / bk) + 1, dtype=torch.bool)
                for i in range(blk.shape[0]):
                    c = int(counts[b, h, i])
                    blk[i, idx[b, h, i, :c].long()] = True
                kept = blk.repeat_interleave(bq, 0)[:Nq].repeat_interleave(bk, 1)[:, :Nk]
                mask[b, h] = ok & kept
        else:
            mask[b] = ok
    return mask


def reference(q, k, v, mask, scale, dtype):
    """(out, lse) of dense attention under ``mask`` computed in ``dtype``.

    float64: torch SDPA with the bool mask (the dense reference). Other dtypes: plain torch math in
    that dtype (matmul, softmax, matmul), the yardstick of the accuracy rule.
    """
    group = q.shape[1] // k.shape[1]
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    k = k.repeat_interleave(group, 1)
    v = v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    if dtype == torch.float64:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    else:
        out = torch.softmax(s, dim=-1) @ v
    seen = mask.any(-1, keepdim=True)
    out = torch.where(seen, out, torch.zeros((), dtype=dtype))
    return out, lse


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def lse_err(a, b):
    a, b = a.double(), b.double()
    assert torch.equal(torch.isneginf(a), torch.isneginf(b)), "lse -inf pattern differs"
    fin = torch.isfinite(b)
    assert torch.isfinite(a[fin]).all()
    return max_err(a[fin], b[fin])


def check_accuracy(got, ref64, torch_lp, dtype, what):
    err_k = max_err(got, ref64) if what == "out" else lse_err(got, ref64)
    if what == "out":
        # rows that see no key are 0 by contract; torch's SDPA gives NaN there on the GPU
        err_t = max_err(torch.nan_to_num(torch_lp, nan=0.0), ref64)
    else:
        fin = torch.isfinite(ref64)
        err_t = max_err(torch_lp[fin], ref64[fin])
    fin = torch.isfinite(ref64)
    bound = 2.0 * err_t + floor(dtype, ref64[fin] if what == "lse" else ref64)
    assert err_k <= bound, f"{what}: kernel err {err_k:.3g} > 2 x torch-{dtype} err {err_t:.3g} + floor"


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


# --------------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class Case:
    name: str
    B: int = 1
    Hq: int = 2
    Hkv: int = 2
    Nq: int = 70
    Nk: int = 70
    D: int = 32
    bq: int = 32
    bk: int = 32
    dtype: torch.dtype = torch.float32
    causal: bool = True
    kind: str = "random"
    q_lens: tuple | None = None
    k_lens: tuple | None = None
    config: tuple | None = None  # (block_m, block_n)
    seed: int = 0


CASES = [
    Case("full_gqa1_ragged_fp32", Nq=100, Nk=100, kind="full"),
    Case("full_noncausal_fp16", Nq=45, Nk=77, bq=16, bk=32, dtype=torch.float16, causal=False, kind="full"),
    Case("random_chunked_gqa4_fp16_d16", Hq=8, Hkv=2, Nq=40, Nk=150, D=16, bq=16, bk=16, dtype=torch.float16),
    Case("random_gqa7_bf16_bq32_bk64", Hq=7, Hkv=1, Nq=130, Nk=130, bq=32, bk=64, dtype=torch.bfloat16),
    Case("random_d64_bf16_tiles16", Nq=150, Nk=150, D=64, bq=64, bk=64, dtype=torch.bfloat16, config=(16, 32)),
    Case("random_d64_fp32_chunked_tiles32", Hq=4, Hkv=1, Nq=96, Nk=170, D=64, bq=64, bk=64, config=(32, 16)),
    Case("random_noncausal_fp32", Nq=90, Nk=140, bq=16, bk=32, causal=False),
    Case("diag_only_fp32", Nq=96, Nk=96, kind="diag"),
    Case("diag_only_chunked_ragged_bf16", Hq=4, Hkv=1, Nq=50, Nk=111, bq=16, bk=32, dtype=torch.bfloat16,
         kind="diag"),
    Case("varlen_B3_gqa2_fp32", B=3, Hq=4, Hkv=2, Nq=80, Nk=120, q_lens=(80, 33, 1), k_lens=(120, 64, 17)),
    Case("varlen_B2_noncausal_bf16", B=2, Hq=2, Hkv=1, Nq=64, Nk=90, bq=16, bk=16, dtype=torch.bfloat16,
         causal=False, q_lens=(50, 64), k_lens=(90, 23)),
    Case("varlen_B2_full_fp16_tiles16", B=2, Hq=4, Hkv=4, Nq=64, Nk=64, bq=32, bk=32, dtype=torch.float16,
         kind="full", q_lens=(64, 20), k_lens=(40, 64), config=(16, 16)),
    Case("q_longer_than_k_fp32", Nq=80, Nk=50, bq=16, bk=16, kind="full"),
    Case("empty_rows_fp32", Hq=4, Hkv=2, Nq=96, Nk=128, bq=16, bk=32, kind="random_empty"),
    Case("default_tiles_block128_fp32", Hq=2, Hkv=1, Nq=300, Nk=300, D=16, bq=128, bk=128),
    Case("default_tiles_block64_bf16", Hq=2, Hkv=2, Nq=150, Nk=200, D=32, bq=64, bk=64, dtype=torch.bfloat16),
    Case("single_query_row_fp32", Hq=4, Hkv=1, Nq=1, Nk=33, bq=16, bk=16),
    Case("bq64_bk16_fp16", Hq=2, Hkv=1, Nq=140, Nk=140, D=32, bq=64, bk=16, dtype=torch.float16, config=(32, 16)),
]


def _make_inputs(c: Case):
    gen = torch.Generator().manual_seed(1000 + c.seed + zlib.crc32(c.name.encode()) % 1000)
    q = torch.randn(c.B, c.Hq, c.Nq, c.D, generator=gen)
    k = torch.randn(c.B, c.Hkv, c.Nk, c.D, generator=gen)
    v = torch.randn(c.B, c.Hkv, c.Nk, c.D, generator=gen)
    counts, idx = make_layout(c.B, c.Hq, c.Nq, c.Nk, c.bq, c.bk, causal=c.causal, q_lens=c.q_lens,
                              k_lens=c.k_lens, kind=c.kind, gen=gen)
    return q, k, v, counts, idx


@lru_cache(maxsize=None)
def _run_case(c: Case, one_loop: bool = False):
    q, k, v, counts, idx = _make_inputs(c)
    ql = torch.tensor(c.q_lens, device=DEVICE) if c.q_lens is not None else None
    kl = torch.tensor(c.k_lens, device=DEVICE, dtype=torch.int32) if c.k_lens is not None else None
    qd, kd, vd = (t.to(DEVICE, c.dtype) for t in (q, k, v))
    out = poisoned(qd.shape, c.dtype)
    cfg = None if c.config is None else dict(block_m=c.config[0], block_n=c.config[1])
    if one_loop:
        cfg = dict(cfg or {}, one_loop=True)
    o, lse = block_sparse_attention(qd, kd, vd, counts.to(DEVICE), idx.to(DEVICE), block_q=c.bq, block_k=c.bk,
                                    causal=c.causal, q_lens=ql, k_lens=kl, return_lse=True, out=out, config=cfg)
    assert o.data_ptr() == out.data_ptr()
    return (q, k, v, counts, idx), o.cpu(), lse.cpu()


# every case runs twice: the default two loops (mask-free blocks, then masked ones) and the single loop
# that masks only the tiles that need it (KernelConfig.one_loop)
ONE_LOOP = pytest.mark.parametrize("one_loop", [False, True], ids=["two_loops", "one_loop"])


@ONE_LOOP
@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_matches_dense(c: Case, one_loop):
    (q, k, v, counts, idx), o, lse = _run_case(c, one_loop)
    assert not torch.isnan(o).any(), "output rows left unwritten (NaN poison survived)"
    assert o.dtype == c.dtype and lse.dtype == torch.float32
    mask = dense_mask(c.B, c.Hq, c.Nq, c.Nk, c.bq, c.bk, counts, idx, causal=c.causal, q_lens=c.q_lens,
                      k_lens=c.k_lens, use_layout=c.kind != "full")
    scale = 1.0 / math.sqrt(c.D)
    # inputs as the kernel saw them (rounded to the dtype), then exact math
    qr, kr, vr = (t.to(c.dtype) for t in (q, k, v))
    ref_o, ref_lse = reference(qr, kr, vr, mask, scale, torch.float64)
    lp_o, lp_lse = reference(qr, kr, vr, mask, scale, c.dtype)
    check_accuracy(o, ref_o, lp_o, c.dtype, "out")
    check_accuracy(lse, ref_lse, lp_lse.double(), c.dtype, "lse")
    # padded query rows and rows that see no key are exactly 0, lse -inf
    empty = ~mask.any(-1)
    assert (o[empty] == 0).all()
    assert torch.isneginf(lse[empty]).all()


@ONE_LOOP
@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_matches_naive(c: Case, one_loop):
    (q, k, v, counts, idx), o, lse = _run_case(c, one_loop)
    qr, kr, vr = (t.to(c.dtype) for t in (q, k, v))
    ql = torch.tensor(c.q_lens) if c.q_lens is not None else None
    kl = torch.tensor(c.k_lens) if c.k_lens is not None else None
    kw = dict(block_q=c.bq, block_k=c.bk, causal=c.causal, q_lens=ql, k_lens=kl, return_lse=True)
    nv_o, nv_lse = block_sparse_attention_naive(qr, kr, vr, counts, idx, **kw)
    ref_o, ref_lse = block_sparse_attention_naive(qr.double(), kr.double(), vr.double(), counts, idx, **kw)
    if c.dtype == torch.float32:
        torch.testing.assert_close(o, nv_o, rtol=1e-5, atol=2e-6)
    else:
        # the naive twin accumulates in fp32 and rounds only the output: the kernel (which also rounds
        # P to the input dtype, like FlashAttention) stays within 2x its error + 1 ulp-ish floor
        assert max_err(o, ref_o) <= 2 * max_err(nv_o, ref_o) + floor(c.dtype, ref_o)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(nv_lse))
    fin = torch.isfinite(nv_lse)
    torch.testing.assert_close(lse[fin], nv_lse[fin], rtol=1e-4, atol=1e-4 if c.dtype == torch.float32 else 2e-2)
    assert max_err(lse[fin], ref_lse[fin]) < (1e-5 if c.dtype == torch.float32 else 1e-2)


# --------------------------------------------------------------------------------------------------
# strides, allocation, edge cases


def test_strided_inputs_and_out_buffer():
    """Arbitrary B/H/N strides for q/k/v/out and the layout tensors; default allocation path."""
    gen = torch.Generator().manual_seed(7)
    B, Hq, Hkv, Nq, Nk, D, bq, bk = 2, 4, 2, 48, 80, 32, 16, 16
    q = torch.randn(B, Nq, Hq, D, generator=gen).to(DEVICE).transpose(1, 2)  # [B, Hq, Nq, D] strided view
    kv = torch.randn(B, Nk, 2, Hkv, D, generator=gen).to(DEVICE)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    counts, idx = make_layout(B, Hq, Nq, Nk, bq, bk, causal=True, kind="random", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    idx_wide = torch.zeros(*idx.shape[:-1], 2 * idx.shape[-1], dtype=torch.int32, device=DEVICE)
    idx_wide[..., ::2] = idx
    idx_strided = idx_wide[..., ::2]  # non-unit stride on the slot dim
    counts_t = counts.transpose(0, 1).contiguous().transpose(0, 1)
    out_buf = poisoned((B, Nq, Hq, D), torch.float32).transpose(1, 2)
    o1 = block_sparse_attention(q, k, v, counts_t, idx_strided, block_q=bq, block_k=bk, out=out_buf)
    assert o1.data_ptr() == out_buf.data_ptr() and not torch.isnan(out_buf).any()
    o2 = block_sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), counts, idx, block_q=bq,
                                block_k=bk)
    nv = block_sparse_attention_naive(q, k, v, counts, idx, block_q=bq, block_k=bk)
    torch.testing.assert_close(o1, nv, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(o2, nv, rtol=1e-5, atol=2e-6)
    assert o2.is_contiguous()
    # default allocation follows q's memory layout: [B, Nq, Hq, D] memory in, [B, Nq, Hq, D] memory out
    o3 = block_sparse_attention(q, k, v, counts, idx, block_q=bq, block_k=bk)
    assert o3.stride() == q.stride() and o3.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(o3, nv, rtol=1e-5, atol=2e-6)
    # a q that is not dense (a slice of a wider head dim) gets a contiguous output
    wide = torch.randn(B, Hq, Nq, 2 * D, generator=gen).to(DEVICE)
    o4 = block_sparse_attention(wide[..., :D], k, v, counts, idx, block_q=bq, block_k=bk)
    assert o4.is_contiguous()
    torch.testing.assert_close(o4, block_sparse_attention_naive(wide[..., :D], k, v, counts, idx, block_q=bq,
                                                                block_k=bk), rtol=1e-5, atol=2e-6)


def test_custom_scale_and_no_lse():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen).to(DEVICE) for _ in range(3))
    counts, idx = make_layout(1, 2, 40, 40, 16, 16, causal=True, kind="random", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    for scale in (0.37, -0.2):
        o = block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, scale=scale,
                                   out=poisoned(q.shape, q.dtype))
        nv = block_sparse_attention_naive(q, k, v, counts, idx, block_q=16, block_k=16, scale=scale)
        assert isinstance(o, torch.Tensor)
        torch.testing.assert_close(o, nv, rtol=1e-5, atol=2e-6)


def test_no_kept_blocks_at_all():
    q = torch.randn(1, 2, 20, 16, device=DEVICE)
    k = v = torch.randn(1, 1, 30, 16, device=DEVICE)
    counts = torch.zeros(1, 2, 2, dtype=torch.int32, device=DEVICE)
    idx = torch.zeros(1, 2, 2, 0, dtype=torch.int32, device=DEVICE)
    o, lse = block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, return_lse=True,
                                    out=poisoned(q.shape, q.dtype))
    assert (o == 0).all() and torch.isneginf(lse).all()
    idx = torch.full((1, 2, 2, 3), 99, dtype=torch.int32, device=DEVICE)  # counts 0: padding never read
    o, lse = block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, return_lse=True,
                                    out=poisoned(q.shape, q.dtype))
    assert (o == 0).all() and torch.isneginf(lse).all()


# --------------------------------------------------------------------------------------------------
# unsupported inputs: ValueError naming the value, never a crash inside Triton


def _good(D=32, dtype=torch.float32, Hq=4, Hkv=2, device=DEVICE):
    q = torch.randn(1, Hq, 32, D, dtype=dtype, device=device)
    k = torch.randn(1, Hkv, 32, D, dtype=dtype, device=device)
    v = torch.randn(1, Hkv, 32, D, dtype=dtype, device=device)
    counts = torch.ones(1, Hq, 2, dtype=torch.int32, device=device)
    idx = torch.zeros(1, Hq, 2, 2, dtype=torch.int32, device=device)
    return q, k, v, counts, idx


def _raises(match, q, k, v, counts, idx, **kw):
    kw.setdefault("block_q", 16)
    kw.setdefault("block_k", 16)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, counts, idx, **kw)


def test_supported_inputs_have_no_reasons():
    q, k, v, counts, idx = _good()
    assert not_supported_reasons(q, k, v, counts, idx, block_q=16, block_k=16) == []


def test_rejects_head_dim_96():
    _raises(r"head_dim=96 \(supported: 16, 32, 64, 128, 256\)", *_good(D=96))


def test_rejects_fp64():
    _raises(r"q\.dtype=float64 \(supported: bfloat16, float16, float32\)", *_good(dtype=torch.float64))


def test_rejects_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(bs_op, "_INTERPRET", False)
    _raises(r"device=cpu without TRITON_INTERPRET=1 \(supported: cuda\)", *_good(device="cpu"))


def test_rejects_index_dtype_and_shape():
    q, k, v, counts, idx = _good()
    _raises(r"kv_indices\.dtype=int64 \(supported: int32\)", q, k, v, counts, idx.long())
    _raises(r"kv_counts\.dtype=int64 \(supported: int32\)", q, k, v, counts.long(), idx)
    _raises(r"kv_indices\.shape=\(1, 4, 2\)", q, k, v, counts, idx[..., 0])
    _raises(r"kv_counts\.shape=\(1, 4, 3\)", q, k, v, torch.ones(1, 4, 3, dtype=torch.int32), idx)


def test_rejects_heads_not_divisible():
    _raises(r"Hq % Hkv = 4 % 3 != 0", *_good(Hq=4, Hkv=3))


def test_rejects_noncontiguous_last_dim_block_size_lens_devices():
    q, k, v, counts, idx = _good()
    q_nc = torch.randn(1, 4, 32, 64, device=DEVICE)[..., ::2]
    _raises(r"q\.stride\(-1\)=2 \(supported: 1", q_nc, k, v, counts, idx)
    _raises(r"block_q=48 \(supported: 16, 32, 64, 128, 256\)", q, k, v, counts, idx, block_q=48)
    _raises(r"q_lens\.dtype=float32", q, k, v, counts, idx, q_lens=torch.ones(1, device=DEVICE))
    _raises(r"k_lens\.shape=\(2,\)", q, k, v, counts, idx, k_lens=torch.ones(2, dtype=torch.int32, device=DEVICE))
    _raises(r"k\.device=meta differs from q\.device=", q, k.to("meta"), v, counts, idx)


def test_all_reasons_listed_at_once():
    q, k, v, counts, idx = _good(D=96, dtype=torch.float64)
    with pytest.raises(ValueError) as ei:
        block_sparse_attention(q, k, v, counts, idx.long(), block_q=16, block_k=16)
    msg = str(ei.value)
    assert "head_dim=96" in msg and "float64" in msg and "kv_indices.dtype=int64" in msg


def test_rejects_bad_config_and_out():
    q, k, v, counts, idx = _good()
    _raises(r"config\.block_m=32 .*block_q=16", q, k, v, counts, idx, config=dict(block_m=32))
    _raises(r"out\.shape=", q, k, v, counts, idx, out=torch.empty(1, 4, 32, 16, device=DEVICE))
    _raises(r"out\.dtype=float16", q, k, v, counts, idx,
            out=torch.empty(q.shape, dtype=torch.float16, device=DEVICE))


def test_capabilities_as_data():
    assert CAPABILITIES.gqa and CAPABILITIES.varlen and CAPABILITIES.lse
    assert CAPABILITIES.causal and CAPABILITIES.non_causal
    assert {torch.bfloat16, torch.float16, torch.float32} <= set(CAPABILITIES.dtypes)
    assert {64, 128} <= set(CAPABILITIES.head_dims) and 96 not in CAPABILITIES.head_dims
    assert "cuda" in CAPABILITIES.devices
    assert {64, 128} <= set(CAPABILITIES.block_sizes)
    with pytest.raises(FrozenInstanceError):
        CAPABILITIES.gqa = False  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# K/V through TMA tensor descriptors (KernelConfig.use_tma): the interpreter emulates descriptor loads
# (zero fill out of bounds), so the kernel's TMA code paths run here. The TMA path must be bitwise
# identical to the pointer path: same tiles, same arithmetic, only the loads differ.

TMA_CASES = [c for c in CASES if c.name in (
    "full_gqa1_ragged_fp32",  # Nk % block_n != 0: host descriptor reads the next head / zero fill
    "random_chunked_gqa4_fp16_d16",  # GQA 4, 16-wide head dim (32-byte descriptor rows)
    "random_gqa7_bf16_bq32_bk64",  # block_n < block_k (2 sub-tiles per kept block)
    "varlen_B3_gqa2_fp32",  # k_lens: rows past k_len in masked tiles
    "varlen_B2_noncausal_bf16",
    "q_longer_than_k_fp32",
    "empty_rows_fp32",
)]


def _cfg_dict(c: Case, **kw):
    cfg = {} if c.config is None else dict(block_m=c.config[0], block_n=c.config[1])
    cfg.update(kw)
    return cfg


@ONE_LOOP
@pytest.mark.parametrize("mode", ["host", "device"])
@pytest.mark.parametrize("c", TMA_CASES, ids=[c.name for c in TMA_CASES])
def test_tma_matches_pointer_path(c: Case, mode, one_loop):
    (q, k, v, counts, idx), o_ref, lse_ref = _run_case(c, one_loop)
    ql = torch.tensor(c.q_lens, device=DEVICE) if c.q_lens is not None else None
    kl = torch.tensor(c.k_lens, device=DEVICE, dtype=torch.int32) if c.k_lens is not None else None
    qd, kd, vd = (t.to(DEVICE, c.dtype) for t in (q, k, v))
    cfg = bs_op._resolve_config(_cfg_dict(c, use_tma=True, tma_descriptor=mode, one_loop=one_loop), c.D, c.dtype,
                                c.bq, c.bk)
    want = bs_op.TMA_HOST if mode == "host" else bs_op.TMA_DEVICE
    assert bs_op.tma_mode(cfg, kd, vd) == want
    o, lse = block_sparse_attention(qd, kd, vd, counts.to(DEVICE), idx.to(DEVICE), block_q=c.bq, block_k=c.bk,
                                    causal=c.causal, q_lens=ql, k_lens=kl, return_lse=True,
                                    out=poisoned(qd.shape, c.dtype), config=cfg)
    assert bs_op.LAST_LAUNCH["tma"] == want
    assert torch.equal(o.cpu(), o_ref) and torch.equal(lse.cpu(), lse_ref)


# KernelConfig.m_chunk only changes which program computes which (head, q-tile): results must be bitwise those
# of the default order, every tile written once, with chunks that do not divide the q-tile count
M_CHUNK_CASES = [c for c in CASES if c.name in (
    "varlen_B3_gqa2_fp32",  # B > 1, ragged lengths, GQA 2
    "random_gqa7_bf16_bq32_bk64",  # GQA 7, 5 q-tiles
    "random_chunked_gqa4_fp16_d16",  # Nq < Nk
    "empty_rows_fp32",
)]


@pytest.mark.parametrize("m_chunk", [0, 1, 3, 64])  # the reference: the default (DEFAULT_M_CHUNK)
@pytest.mark.parametrize("c", M_CHUNK_CASES, ids=[c.name for c in M_CHUNK_CASES])
def test_program_order_is_bitwise_neutral(c: Case, m_chunk):
    (q, k, v, counts, idx), o_ref, lse_ref = _run_case(c)
    ql = torch.tensor(c.q_lens, device=DEVICE) if c.q_lens is not None else None
    kl = torch.tensor(c.k_lens, device=DEVICE, dtype=torch.int32) if c.k_lens is not None else None
    qd, kd, vd = (t.to(DEVICE, c.dtype) for t in (q, k, v))
    o, lse = block_sparse_attention(qd, kd, vd, counts.to(DEVICE), idx.to(DEVICE), block_q=c.bq, block_k=c.bk,
                                    causal=c.causal, q_lens=ql, k_lens=kl, return_lse=True,
                                    out=poisoned(qd.shape, c.dtype), config=_cfg_dict(c, m_chunk=m_chunk))
    assert torch.equal(o.cpu(), o_ref) and torch.equal(lse.cpu(), lse_ref)


def test_default_program_order():
    assert bs_op.default_config(128, torch.bfloat16, 128, 128).m_chunk == bs_op.DEFAULT_M_CHUNK > 0
    assert KernelConfig(128, 128, 8, 5).m_chunk == 0  # an explicit config keeps its own order


def test_rejects_bad_m_chunk():
    q, k, v, counts, idx = _good()
    for bad in (-1, 2.5, True):
        _raises(r"config\.m_chunk=", q, k, v, counts, idx, config=dict(m_chunk=bad))


@pytest.mark.parametrize("mode", ["host", "device"])
def test_tma_ignores_garbage_past_k_len(mode):
    """NaN / inf in K/V rows past k_len (varlen padding) must not leak (0 * NaN) into the output."""
    gen = torch.Generator().manual_seed(11)
    B, Hq, Hkv, N, D, bq, bk = 2, 4, 2, 72, 16, 32, 32  # N % block_n != 0
    k_lens = torch.tensor([50, 5], dtype=torch.int32, device=DEVICE)
    q = torch.randn(B, Hq, N, D, generator=gen).to(DEVICE, torch.bfloat16)
    k = torch.randn(B, Hkv, N, D, generator=gen).to(DEVICE, torch.bfloat16)
    v = torch.randn(B, Hkv, N, D, generator=gen).to(DEVICE, torch.bfloat16)
    for b, n in enumerate(k_lens.tolist()):
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("inf")
    counts, idx = make_layout(B, Hq, N, N, bq, bk, causal=False, k_lens=k_lens.tolist(), kind="full", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    kw = dict(block_q=bq, block_k=bk, causal=False, k_lens=k_lens, return_lse=True)
    o0, l0 = block_sparse_attention(q, k, v, counts, idx, **kw)
    o1, l1 = block_sparse_attention(q, k, v, counts, idx, **kw, config=dict(use_tma=True, tma_descriptor=mode))
    assert bs_op.LAST_LAUNCH["tma"] != bs_op.TMA_OFF
    assert not torch.isnan(o1).any() and torch.isfinite(o1).all()
    assert torch.equal(o0, o1) and torch.equal(l0, l1)


def test_tma_mode_selection_and_fallback():
    """Host descriptors need a 2-D view of K/V; device ones only 16-byte alignment; else pointer loads."""
    host = KernelConfig(32, 32, 4, 2, use_tma=True)
    dev = KernelConfig(32, 32, 4, 2, use_tma=True, tma_descriptor="device")
    off = KernelConfig(32, 32, 4, 2)
    k = torch.randn(2, 2, 48, 32, device=DEVICE)
    assert (bs_op.tma_mode(host, k, k), bs_op.tma_mode(dev, k, k), bs_op.tma_mode(off, k, k)) == (
        bs_op.TMA_HOST, bs_op.TMA_DEVICE, bs_op.TMA_OFF)
    kv = torch.randn(2, 48, 2, 2, 32, device=DEVICE)  # [B, N, 2, H, D]: no 2-D [B*H*N, D] view
    ks, vs = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    assert bs_op.tma_mode(host, ks, vs) == bs_op.TMA_OFF
    assert bs_op.tma_mode(dev, ks, vs) == bs_op.TMA_DEVICE
    flat = torch.randn(2 * 2 * 48 * 32 + 1, device=DEVICE)
    mis = flat[1:].view(2, 2, 48, 32)  # base not 16-byte aligned
    assert bs_op.tma_mode(host, mis, mis) == bs_op.TMA_OFF and bs_op.tma_mode(dev, mis, mis) == bs_op.TMA_OFF
    odd = torch.randn(2, 2, 48, 36, device=DEVICE)[..., :32]  # row stride 144 bytes: 16-byte aligned
    assert bs_op.tma_mode(dev, odd, odd) == bs_op.TMA_DEVICE
    odd = torch.randn(2, 2, 48, 34, device=DEVICE)[..., :32]  # row stride 136 bytes: not 16-byte aligned
    assert bs_op.tma_mode(host, odd, odd) == bs_op.TMA_OFF and bs_op.tma_mode(dev, odd, odd) == bs_op.TMA_OFF


@pytest.mark.parametrize("mode", ["host", "device"])
def test_tma_strided_inputs(mode):
    """Strided K/V (no 2-D view): host falls back to pointer loads, device descriptors use the strides."""
    gen = torch.Generator().manual_seed(5)
    B, Hq, Hkv, N, D, bq, bk = 2, 4, 2, 48, 32, 16, 16
    q = torch.randn(B, Hq, N, D, generator=gen).to(DEVICE)
    kv = torch.randn(B, N, 2, Hkv, D, generator=gen).to(DEVICE)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    counts, idx = make_layout(B, Hq, N, N, bq, bk, causal=True, kind="random", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    o0 = block_sparse_attention(q, k, v, counts, idx, block_q=bq, block_k=bk)
    o1 = block_sparse_attention(q, k, v, counts, idx, block_q=bq, block_k=bk,
                                config=dict(use_tma=True, tma_descriptor=mode))
    assert bs_op.LAST_LAUNCH["tma"] == (bs_op.TMA_OFF if mode == "host" else bs_op.TMA_DEVICE)
    assert torch.equal(o0, o1)


def test_rejects_unsupported_tma_settings(monkeypatch):
    q, k, v, counts, idx = _good()
    _raises(r"config\.use_tma='yes' \(supported: True, False\)", q, k, v, counts, idx, config=dict(use_tma="yes"))
    _raises(r"config\.tma_descriptor='tiled' \(supported: 'host', 'device'\)", q, k, v, counts, idx,
            config=dict(use_tma=True, tma_descriptor="tiled"))
    reasons = bs_op.tma_config_reasons
    on = KernelConfig(64, 64, 4, 3, use_tma=True)
    assert reasons(on, torch.device("cuda"), interpret=False, capability=(9, 0)) == []
    assert reasons(replace(on, use_tma=False), torch.device("cuda"), interpret=False, capability=(8, 0)) == []
    (r,) = reasons(on, torch.device("cuda"), interpret=False, capability=(8, 0))
    assert "compute capability=8.0 (supported: >= 9.0, Hopper TMA): set use_tma=False" in r
    (r,) = reasons(on, torch.device("cpu"), interpret=False)
    assert "use_tma=True on device=cpu (supported: cuda with compute capability >= 9.0" in r
    assert reasons(on, torch.device("cpu"), interpret=True) == []  # the interpreter emulates TMA
    monkeypatch.setattr(bs_op, "_tma_api_missing", lambda kind: "triton 3.2 has no tl.make_tensor_descriptor")
    _raises(r"use_tma=True with tma_descriptor='device': triton 3\.2 has no tl\.make_tensor_descriptor "
            r"\(supported: triton >= 3\.4\)", q, k, v, counts, idx, config=dict(use_tma=True, tma_descriptor="device"))


# --------------------------------------------------------------------------------------------------
# the fast / masked split of a layout row scans the indices in chunks: exact for any order


@pytest.mark.parametrize("chunk", [8, 64])
def test_unordered_indices_and_multi_chunk_scan(monkeypatch, chunk):
    """Rows longer than one scan chunk, indices in random order (the contract says ascending, the
    kernel stays exact anyway: a masked block anywhere in the row is never run unmasked)."""
    monkeypatch.setattr(bs_op, "_IDX_CHUNK", chunk)
    gen = torch.Generator().manual_seed(21)
    B, Hq, Hkv, N, D, bq, bk = 1, 2, 1, 300, 16, 16, 16  # rows keep up to 19 blocks: > 2 chunks of 8
    q, k, v = (torch.randn(B, h, N, D, generator=gen).to(DEVICE) for h in (Hq, Hkv, Hkv))
    counts, idx = make_layout(B, Hq, N, N, bq, bk, causal=True, kind="random", gen=gen)
    shuffled = idx.clone()
    for h in range(Hq):
        for i in range(counts.shape[-1]):
            c = int(counts[0, h, i])
            shuffled[0, h, i, :c] = idx[0, h, i, :c][torch.randperm(c, generator=gen)]
    kw = dict(block_q=bq, block_k=bk, return_lse=True)
    o_sorted, l_sorted = block_sparse_attention(q, k, v, counts.to(DEVICE), idx.to(DEVICE), **kw)
    o, lse = block_sparse_attention(q, k, v, counts.to(DEVICE), shuffled.to(DEVICE), **kw)
    nv, nv_lse = block_sparse_attention_naive(q.cpu(), k.cpu(), v.cpu(), counts, idx, **kw)
    torch.testing.assert_close(o.cpu(), nv, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(o_sorted.cpu(), nv, rtol=1e-5, atol=2e-6)
    fin = torch.isfinite(nv_lse)
    torch.testing.assert_close(lse.cpu()[fin], nv_lse[fin], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the default config of short sequences on a Hopper GPU: one loop with host TMA


def test_short_sequence_config_selection():
    base = bs_op.default_config(128, torch.bfloat16, 128, 128)
    cuda = torch.device("cuda")

    def pick(nk, *, k=None, cap=(9, 0), interpret=False, device=cuda, d=128, cfg=base):
        k = torch.empty(1, 8, nk, d, dtype=torch.bfloat16) if k is None else k
        return bs_op.short_sequence_config(cfg, d, k, k, device, interpret=interpret, capability=cap)

    short = pick(bs_op.ONE_LOOP_MAX_NK)
    assert (short.one_loop, short.use_tma, short.tma_descriptor, short.num_stages) == (True, True, "host", 3)
    assert (short.block_m, short.block_n, short.num_warps) == (base.block_m, base.block_n, base.num_warps)
    assert pick(bs_op.ONE_LOOP_MAX_NK + 1) == base  # long rows: the two-loop 5-stage default
    assert pick(4096, cap=(8, 0)) == base  # no TMA before Hopper
    assert pick(4096, interpret=True) == base
    assert pick(4096, device=torch.device("cpu")) == base
    # K/V of [B, N, H, D] memory seen as [B, H, N, D] (transformers' layout): no host descriptor -> default
    bnhd = torch.empty(2, 4096, 8, 128, dtype=torch.bfloat16).transpose(1, 2)
    assert pick(4096, k=bnhd) == base
    assert pick(4096, d=64, cfg=bs_op.default_config(64, torch.bfloat16, 128, 128)).one_loop is False


def test_explicit_config_is_never_replaced(monkeypatch):
    """short_sequence_config only rewrites the default: an explicit config runs as given."""
    calls = []
    monkeypatch.setattr(bs_op, "short_sequence_config", lambda cfg, *a, **kw: calls.append(cfg) or cfg)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=gen).to(DEVICE) for _ in range(3))
    counts, idx = make_layout(1, 2, 64, 64, 16, 16, causal=True, kind="full", gen=gen)
    kw = dict(block_q=16, block_k=16)
    block_sparse_attention(q, k, v, counts.to(DEVICE), idx.to(DEVICE), **kw)
    assert len(calls) == 1
    block_sparse_attention(q, k, v, counts.to(DEVICE), idx.to(DEVICE), **kw, config=dict(one_loop=True))
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------------
# prepared calls: the launcher validates and derives a call's launch once per call signature (shapes, strides,
# dtypes, devices, alignment, options) and reuses it; every reuse must read the new tensors


def _fresh(gen, B=2, Hq=4, Hkv=2, N=48, D=16, dtype=torch.float32):
    return [torch.randn(B, h, N, D, generator=gen, dtype=dtype).to(DEVICE) for h in (Hq, Hkv, Hkv)]


def test_prepared_call_reads_new_tensors_each_time():
    gen = torch.Generator().manual_seed(21)
    counts, idx = make_layout(2, 4, 48, 48, 16, 16, causal=True, kind="random", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    lens = torch.tensor([48, 29], dtype=torch.int32, device=DEVICE)
    kw = dict(block_q=16, block_k=16, q_lens=lens, k_lens=lens)
    for step in range(3):  # same signature, fresh values (inputs, layout, lengths) each time
        q, k, v = _fresh(gen)
        if step == 2:
            counts2, idx2 = make_layout(2, 4, 48, 48, 16, 16, causal=True, kind="random", gen=gen,
                                        q_lens=[48, 17], k_lens=[48, 17])
            counts, idx = counts2.to(DEVICE), idx2.to(DEVICE)
            lens = torch.tensor([48, 17], dtype=torch.int32, device=DEVICE)
            kw.update(q_lens=lens, k_lens=lens)
        o, lse = block_sparse_attention(q, k, v, counts, idx, return_lse=True, **kw)
        no, nl = block_sparse_attention_naive(q, k, v, counts, idx, return_lse=True, **kw)
        torch.testing.assert_close(o, no, rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(lse, nl, rtol=1e-5, atol=2e-5)
    assert len(bs_op._PREPARED) == 1  # one signature: prepared once, reused twice


def test_prepared_call_keys_on_layout_strides_alignment_and_options():
    gen = torch.Generator().manual_seed(22)
    counts, idx = make_layout(1, 4, 48, 48, 16, 16, causal=True, kind="random", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    q, k, v = _fresh(gen, B=1)
    base = dict(block_q=16, block_k=16)

    def check(q, k, v, **kw):
        kw = {**base, **kw}
        o = block_sparse_attention(q, k, v, counts, idx, **kw)
        kw.pop("out", None)
        kw.pop("config", None)
        torch.testing.assert_close(o, block_sparse_attention_naive(q, k, v, counts, idx, **kw), rtol=1e-5, atol=2e-6)

    check(q, k, v)
    n = len(bs_op._PREPARED)
    # [B, N, H, D] memory seen as [B, H, N, D]: other strides, another entry
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    check(qt, k, v)
    assert len(bs_op._PREPARED) == n + 1
    # K/V starting 4 bytes into their storage (not 16-byte aligned)
    raw = torch.randn(k.numel() + 1, device=DEVICE)
    k_off = raw[1:].view_as(k)
    assert k_off.data_ptr() % 16 != k.data_ptr() % 16
    check(q, k_off, v)
    assert len(bs_op._PREPARED) == n + 2
    # options: causal, scale, an explicit config, an out buffer
    check(q, k, v, causal=False)
    check(q, k, v, scale=0.3)
    check(q, k, v, config=KernelConfig(16, 16, 4, 1))
    check(q, k, v, out=poisoned(q.shape, q.dtype))
    assert len(bs_op._PREPARED) == n + 6
    check(q, k, v, scale=0.3)  # seen before
    assert len(bs_op._PREPARED) == n + 6


def test_prepared_call_still_refuses_bad_inputs():
    q, k, v, counts, idx = _good()
    block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16)
    _raises(r"q\.dtype=float64", q.double(), k, v, counts, idx)
    _raises(r"kv_indices\.dtype=int64", q, k, v, counts, idx.long())
    _raises(r"scale=inf", q, k, v, counts, idx, scale=float("inf"))
    _raises(r"out\.shape=", q, k, v, counts, idx, out=torch.empty(1, device=DEVICE))
    _raises(r"config keys \['bogus'\]", q, k, v, counts, idx, config=dict(bogus=1))


def test_prepared_calls_bounded_and_dict_configs_not_kept(monkeypatch):
    monkeypatch.setattr(bs_op, "_PREPARED_MAX", 2)
    q, k, v, counts, idx = _good()
    for scale in (0.1, 0.2, 0.3):
        block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, scale=scale)
    assert len(bs_op._PREPARED) == 2
    assert [key[12] for key in bs_op._PREPARED] == [0.2, 0.3]  # the oldest went first
    bs_op.clear_call_cache()
    block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, config=dict(block_m=16))
    block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, scale=torch.tensor(0.2))
    assert not bs_op._PREPARED  # a dict config or a tensor scale: validated every call, nothing kept


def test_check_results_kept_per_signature(monkeypatch):
    """``not_supported_reasons`` answers once per signature (it reads only metadata): the kept answer is a copy,
    another signature gets its own, non-tensors are checked every call, and the cache is bounded."""
    q, k, v, counts, idx = _good()
    calls = []
    real = bs_op._reasons
    monkeypatch.setattr(bs_op, "_reasons", lambda *a: calls.append(1) or real(*a))
    kw = dict(block_q=16, block_k=16)
    assert bs_op.not_supported_reasons(q, k, v, counts, idx, **kw) == []
    got = bs_op.not_supported_reasons(torch.randn_like(q), k, v, counts, idx, **kw)  # same signature
    assert got == [] and len(calls) == 1
    got.append("changed by the caller")
    assert bs_op.not_supported_reasons(q, k, v, counts, idx, **kw) == []
    bad = bs_op.not_supported_reasons(q, k, v, counts, idx.long(), **kw)  # another signature: checked
    assert len(calls) == 2 and any("kv_indices.dtype=int64" in r for r in bad)
    assert bs_op.not_supported_reasons(q, k, v, counts, idx, block_q=16, block_k=32) == [] and len(calls) == 3
    assert bs_op.not_supported_reasons(q, k, v, counts, [0], **kw)[0].startswith("kv_indices is a list")
    assert len(calls) == 4 and len(bs_op._REASONS) == 3  # a list: not hashable as metadata, checked, not kept
    first = next(iter(bs_op._REASONS))
    monkeypatch.setattr(bs_op, "_PREPARED_MAX", 2)
    bs_op.not_supported_reasons(q.half(), k.half(), v.half(), counts, idx, **kw)
    assert len(bs_op._REASONS) == 3 and first not in bs_op._REASONS  # past the bound: each new one drops the oldest
    bs_op.clear_call_cache()
    assert not bs_op._REASONS


def test_prepared_empty_and_keyless_calls():
    q = torch.randn(1, 2, 20, 16, device=DEVICE)
    k = v = torch.randn(1, 1, 30, 16, device=DEVICE)
    counts = torch.zeros(1, 2, 2, dtype=torch.int32, device=DEVICE)
    idx = torch.zeros(1, 2, 2, 0, dtype=torch.int32, device=DEVICE)
    for _ in range(2):  # the second call reuses the prepared "no key anywhere" call
        o, lse = block_sparse_attention(q, k, v, counts, idx, block_q=16, block_k=16, return_lse=True,
                                        out=poisoned(q.shape, q.dtype))
        assert (o == 0).all() and torch.isneginf(lse).all()
    q0 = torch.randn(1, 2, 0, 16, device=DEVICE)
    for _ in range(2):
        o, lse = block_sparse_attention(q0, k, v, counts[:, :, :0], idx[:, :, :0], block_q=16, block_k=16,
                                        return_lse=True)
        assert o.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)


@pytest.mark.skipif(DEVICE != "cuda", reason="direct launches exist for compiled kernels only")
def test_direct_launch_matches_jit_launch(monkeypatch):
    """From the second call on, the compiled kernel is launched directly; results are bitwise those of Triton's JIT
    path (SPARSEKIT_FAST_LAUNCH off)."""
    from sparsekit.kernels import _launch

    gen = torch.Generator().manual_seed(23)
    q, k, v = (t.to(torch.bfloat16) for t in _fresh(gen, B=1, Hq=8, Hkv=2, N=300, D=128))
    counts, idx = make_layout(1, 8, 300, 300, 64, 64, causal=True, kind="random", gen=gen)
    counts, idx = counts.to(DEVICE), idx.to(DEVICE)
    kw = dict(block_q=64, block_k=64, return_lse=True)
    first = block_sparse_attention(q, k, v, counts, idx, **kw)
    (prep,) = bs_op._PREPARED.values()
    assert prep.launch is not None and prep.launch.compiled is not None
    q2 = torch.randn_like(q)
    direct = block_sparse_attention(q2, k, v, counts, idx, **kw)
    bs_op.clear_call_cache()
    monkeypatch.setattr(_launch, "FAST_LAUNCH", False)
    jit = block_sparse_attention(q2, k, v, counts, idx, **kw)
    (prep,) = bs_op._PREPARED.values()
    assert prep.launch.compiled is None
    assert torch.equal(direct[0], jit[0]) and torch.equal(direct[1], jit[1])
    assert not torch.equal(first[0], direct[0])
