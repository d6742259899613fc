"""``sdpa`` kernel (plugins/sdpa_kernel): dense torch SDPA, equal to the ``torch`` kernel on full layouts
(GQA 1/4/7, chunked prefill Nq < Nk, varlen B > 1, non-causal, fp32/bf16), refusing sparse layouts."""

from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, BlockLayout, UnsupportedError
from sparsekit.plugins.common.kernels import TorchKernel
from sparsekit.plugins.sdpa_kernel import SdpaKernel

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance

FLOOR = {torch.float32: 2e-6, torch.bfloat16: 2e-3}
CASES = [
    # (B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, lens)
    pytest.param(1, 4, 4, 128, 128, 32, 32, 32, True, None, id="gqa1"),
    pytest.param(2, 4, 1, 100, 100, 16, 16, 32, True, None, id="gqa4-ragged"),
    pytest.param(1, 7, 1, 70, 200, 32, 16, 16, True, None, id="gqa7-chunked"),
    pytest.param(3, 8, 2, 96, 150, 16, 32, 16, True, ([96, 40, 7], [150, 40, 90]), id="gqa4-varlen"),
    pytest.param(2, 4, 2, 64, 90, 32, 16, 16, False, ([64, 30], [90, 12]), id="non-causal-varlen"),
    pytest.param(1, 2, 2, 80, 48, 16, 16, 16, False, None, id="non-causal-Nq>Nk"),
]


def make(B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, lens, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen)
    k = torch.randn(B, Hkv, Nk, D, generator=gen)
    v = torch.randn(B, Hkv, Nk, D, generator=gen)
    kw = {} if lens is None else {"q_lens": torch.tensor(lens[0]), "k_lens": torch.tensor(lens[1])}
    return q, k, v, kw


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bq,bk,causal,lens", CASES)
def test_full_layout_equals_torch_kernel(B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, lens, dtype):
    q, k, v, kw = make(B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, lens, dtype)
    ref_p = AttentionProblem.create(q.double(), k.double(), block_q=bq, block_k=bk, causal=causal, **kw)
    ref = TorchKernel().forward(ref_p, v.double(), BlockLayout.full(ref_p))
    p = AttentionProblem.create(q.to(dtype), k.to(dtype), block_q=bq, block_k=bk, causal=causal, **kw)
    layout = BlockLayout.full(p)
    naive = TorchKernel().forward(p, v.to(dtype), layout)
    kern = SdpaKernel()
    assert kern.not_supported_reasons(p, v.to(dtype), layout) == []
    out = kern.forward(p, v.to(dtype), layout)
    assert out.dtype == dtype and out.shape == ref.shape
    if lens is not None:  # padded rows are 0
        for b, ql in enumerate(lens[0]):
            assert bool((out[b, :, ql:] == 0).all())
    err = float((out.double() - ref).abs().max())
    assert err <= tolerance(out, naive, ref, FLOOR[dtype])


@pytest.mark.parametrize("lens", [None, ([64, 20], [64, 50])], ids=["dense-batch", "varlen"])
def test_refuses_sparse_layout_with_reason(lens):
    q, k, v, kw = make(2, 4, 2, 64, 64, 16, 16, 16, True, lens, torch.float32)
    p = AttentionProblem.create(q, k, block_q=16, block_k=16, **kw)
    full = BlockLayout.full(p)
    kern = SdpaKernel()
    # drop one block of one row: max_k unchanged, so the device-side comparison decides
    mask = full.to_dense().clone()
    mask[0, 1, 2, 0] = False
    sparse = BlockLayout.from_dense(mask, 64, 64, block_q=16, block_k=16, **kw)
    reasons = kern.not_supported_reasons(p, v, sparse)
    assert len(reasons) == 1 and "mask='dense'" in reasons[0] and "block-sparse" in reasons[0]
    # a streaming layout: max_k below the visible blocks, decided on the host
    streaming = sparsekit.build(mask="streaming(sink_blocks=1,local_blocks=1)", block_q=16, block_k=16)
    lay = streaming.plan(q, k, **kw).layout
    assert any("mask='dense'" in r for r in kern.not_supported_reasons(p, v, lay))
    attn = sparsekit.build(mask="streaming(sink_blocks=1,local_blocks=1)", kernel="sdpa", block_q=16, block_k=16)
    with pytest.raises(UnsupportedError, match="mask='dense'"):
        attn(q, k, v, **kw)


def test_auto_picks_sdpa_only_for_full_layouts():
    q, k, v, _ = make(1, 4, 2, 64, 64, 16, 16, 16, True, None, torch.float32)
    dense = sparsekit.build("dense", block_q=16, block_k=16)
    plan = dense.plan(q, k)
    assert dense.select_kernel(plan.problem, v, plan.layout).name == "sdpa"
    sparse = sparsekit.build("streaming", mask={"local_blocks": 1}, block_q=16, block_k=16)
    plan = sparse.plan(q, k)
    assert sparse.select_kernel(plan.problem, v, plan.layout).name != "sdpa"
    out = dense(q, k, v)
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double())
    assert float((out.double() - ref).abs().max()) < 1e-5


def test_declarations():
    assert SdpaKernel.priority > TorchKernel.priority
    assert SdpaKernel.capabilities.gqa and SdpaKernel.capabilities.varlen
    assert "cpu" in SdpaKernel.capabilities.devices and "cuda" in SdpaKernel.capabilities.devices
