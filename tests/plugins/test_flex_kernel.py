"""``flex`` kernel (plugins/flex_kernel): FlexAttention from the layout equals the ``torch`` kernel on random and
full layouts (GQA 1/4/7, chunked prefill Nq < Nk, varlen B > 1, non-causal, fp32/bf16). On CPU it runs eager
(``compile=False``); ``compile=True`` is refused there with a reason."""

from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, BlockLayout, ConfigError
from sparsekit.plugins.common.kernels import TorchKernel
from sparsekit.plugins.flex_kernel import FlexKernel

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
FLOOR = {torch.float32: 2e-6, torch.bfloat16: 2e-3}
CASES = [
    # (B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, lens)
    pytest.param(1, 4, 4, 128, 128, 32, 32, 32, True, None, id="gqa1"),
    pytest.param(2, 4, 1, 100, 100, 16, 16, 32, True, None, id="gqa4-ragged"),
    pytest.param(1, 7, 1, 70, 200, 32, 16, 16, True, None, id="gqa7-chunked"),
    pytest.param(3, 8, 2, 96, 150, 16, 32, 16, True, ([96, 40, 7], [150, 40, 90]), id="gqa4-varlen"),
    pytest.param(2, 4, 2, 64, 90, 32, 16, 16, False, ([64, 30], [90, 12]), id="non-causal-varlen"),
]


def make(B, Hq, Hkv, Nq, Nk, D, lens, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen)
    k = torch.randn(B, Hkv, Nk, D, generator=gen)
    v = torch.randn(B, Hkv, Nk, D, generator=gen)
    kw = {} if lens is None else {"q_lens": torch.tensor(lens[0]), "k_lens": torch.tensor(lens[1])}
    return q, k, v, kw


def random_layout(p: AttentionProblem, seed: int) -> BlockLayout:
    """Random visible blocks, different per head (rows may keep nothing, or miss their diagonal)."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(p.B, p.Hq, p.nQb, p.nKb, generator=gen) < 0.5
    keep &= p.visible_mask().cpu()[:, None]
    return BlockLayout.from_dense(keep, p.Nq, p.Nk, block_q=p.block_q, block_k=p.block_k, causal=p.causal,
                                  q_lens=p.q_lens, k_lens=p.k_lens).to(p.device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("which", ["random", "full"])
@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bq,bk,causal,lens", CASES)
def test_equals_torch_kernel(B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, lens, which, dtype):
    q, k, v, kw = make(B, Hq, Hkv, Nq, Nk, D, lens, seed=7)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    kw = {n: t.to(DEVICE) for n, t in kw.items()}
    p64 = AttentionProblem.create(q.double(), k.double(), block_q=bq, block_k=bk, causal=causal, **kw)
    layout = random_layout(p64, seed=B * 1000 + Nk) if which == "random" else BlockLayout.full(p64)
    layout.validate()
    ref = TorchKernel().forward(p64, v.double(), layout)
    p = AttentionProblem.create(q.to(dtype), k.to(dtype), block_q=bq, block_k=bk, causal=causal, **kw)
    naive = TorchKernel().forward(p, v.to(dtype), layout)
    kern = FlexKernel(compile=ON_GPU)
    assert kern.not_supported_reasons(p, v.to(dtype), layout) == []
    out = kern.forward(p, v.to(dtype), layout)
    assert out.dtype == dtype and out.shape == ref.shape
    err = float((out.double() - ref).abs().max())
    assert err <= tolerance(out, naive, ref, FLOOR[dtype]), err


@pytest.mark.skipif(ON_GPU, reason="CPU refusal")
def test_compile_refused_on_cpu_with_reason():
    q, k, v, _ = make(1, 2, 1, 32, 32, 16, None, seed=1)
    p = AttentionProblem.create(q, k, block_q=16, block_k=16)
    reasons = FlexKernel().not_supported_reasons(p, v, BlockLayout.full(p))
    assert len(reasons) == 1 and "device=cpu" in reasons[0] and "compile=False" in reasons[0]
    assert FlexKernel().emulated(p)  # auto ranks it after natively running kernels
    # auto never picks flex on CPU (its default instance compiles); the named eager instance runs
    attn = sparsekit.build("streaming", mask={"local_blocks": 1}, block_q=16, block_k=16)
    plan = attn.plan(q, k)
    assert attn.select_kernel(plan.problem, v, plan.layout).name != "flex"
    eager = sparsekit.build("streaming", mask={"local_blocks": 1}, kernel="flex(compile=False)", block_q=16, block_k=16)
    out = eager(q, k, v)
    ref = TorchKernel().forward(plan.problem, v, plan.layout)
    assert float((out - ref).abs().max()) < 1e-5


def test_refuses_float64_and_names_fix():
    q, k, v, _ = make(1, 2, 1, 32, 32, 16, None, seed=2)
    p = AttentionProblem.create(q.double(), k.double(), block_q=16, block_k=16)
    reasons = FlexKernel(compile=False).not_supported_reasons(p, v.double(), BlockLayout.full(p))
    assert any(r.startswith("dtype=float64") for r in reasons)


def test_options():
    assert FlexKernel().label == "flex(compile=True)"
    assert FlexKernel.priority < sparsekit.get_registry().get("kernel", "triton").cls.priority
    with pytest.raises(ConfigError, match="compile"):
        FlexKernel.create(compile="yes")
