"""The mass-to-budget Triton kernel (``kernels/mass_budget``) against its plain-torch twin, under
``TRITON_INTERPRET=1`` on CPU (compiled on a GPU when one is present)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from sparsekit import AttentionProblem  # noqa: E402
from sparsekit.kernels.mass_budget import mass_budget_naive  # noqa: E402
from sparsekit.kernels.mass_budget import op  # noqa: E402
from sparsekit.layout import block_geometry  # noqa: E402
from sparsekit.plugins.proxyattn.budget import DynamicBudget  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _visible(B: int, Nq: int, Nk: int, bq: int, bk: int, causal: bool) -> torch.Tensor:
    return block_geometry(B, Nq, Nk, bq, bk, causal, None, None, torch.device("cpu"))[2]


CASES = [  # B, Hq, Nq, Nk, bq, bk, causal
    (1, 4, 64, 64, 16, 16, True),  # 4 kv-blocks
    (2, 6, 300, 300, 16, 16, True),  # 19 blocks, ragged
    (1, 7, 40, 1000, 16, 32, True),  # chunked prefill: visible from a prefix offset
    (1, 3, 1, 17, 16, 16, True),  # one query row
    (2, 5, 200, 150, 32, 16, False),  # non-causal
    (1, 2, 2100, 2100, 16, 16, True),  # 132 kv-blocks: several q tiles of the per-block loop
]


@pytest.mark.parametrize(("gamma", "min_blocks"), [(0.3, 0), (0.9, 3), (0.999, 0)])
@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}_H{c[1]}_{c[2]}x{c[3]}_{c[4]}-{c[5]}_{'c' if c[6] else 'nc'}"
                                             for c in CASES])
def test_matches_naive(case, gamma, min_blocks):
    B, Hq, Nq, Nk, bq, bk, causal = case
    visible = _visible(B, Nq, Nk, bq, bk, causal)
    nKb = -(-Nk // bk)
    gen = torch.Generator().manual_seed(B * 1000 + Hq * 10 + nKb)
    # softmax-normalised masses; some heads peaked, some flat; invisible blocks hold 0
    logits = torch.randn(B, Hq, nKb, generator=gen) * torch.rand(B, Hq, 1, generator=gen) * 6
    vis_last = torch.arange(nKb) < visible[:, -1:, None]
    mass = torch.softmax(logits.masked_fill(~vis_last, float("-inf")), -1)
    want = mass_budget_naive(mass, visible, gamma, min_blocks)
    got = op.mass_budget(mass.to(DEVICE), visible.to(DEVICE), gamma, min_blocks)
    for w, g, name in zip(want, got, ("per_block", "ratio", "count")):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g.cpu(), w), name


def test_exact_ties_and_zero_mass():
    """Equal masses (ties) and exact zeros: the count only depends on the sorted values."""
    visible = _visible(1, 64, 64, 16, 16, True)  # 4 blocks
    mass = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]]])
    for gamma in (0.2, 0.5, 0.6, 0.99):
        want = mass_budget_naive(mass, visible, gamma, 0)
        got = op.mass_budget(mass.to(DEVICE), visible.to(DEVICE), gamma, 0)
        for w, g in zip(want, got):
            assert torch.equal(g.cpu(), w)


def test_rejects_bad_inputs():
    visible = _visible(1, 64, 64, 16, 16, True)
    mass = torch.full((1, 2, 4), 0.25, device=DEVICE)
    with pytest.raises(ValueError, match=r"mass torch.float16 \(1, 2, 4\) \(supported: float32"):
        op.mass_budget(mass.half(), visible.to(DEVICE), 0.9, 0)
    with pytest.raises(ValueError, match=r"gamma=1.0 \(supported: 0 < gamma < 1"):
        op.mass_budget(mass, visible.to(DEVICE), 1.0, 0)
    with pytest.raises(ValueError, match=r"visible torch.float32"):
        op.mass_budget(mass, visible.float().to(DEVICE), 0.9, 0)
    with pytest.raises(ValueError, match=r"min_blocks=-1"):
        op.mass_budget(mass, visible.to(DEVICE), 0.9, -1)


@pytest.mark.parametrize("causal", [True, False])
def test_dynamic_budget_triton_equals_torch(causal):
    """The ``dynamic`` stage end to end: impl='triton' (Triton mass + fused budget) vs impl='torch'."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 150, 16, generator=gen) * 2
    k = torch.randn(2, 1, 150, 16, generator=gen) * 2
    p_cpu = AttentionProblem.create(q, k, k, block_q=16, block_k=16, causal=causal)
    p_dev = AttentionProblem.create(q.to(DEVICE), k.to(DEVICE), k.to(DEVICE), block_q=16, block_k=16, causal=causal)
    want = DynamicBudget(gamma=0.9, min_budget=32, impl="torch").allocate(p_cpu, None)
    got = DynamicBudget(gamma=0.9, min_budget=32, impl="triton").allocate(p_dev, None)
    assert torch.equal(got.value.cpu(), want.value)
    assert torch.equal(got.info["count_last"].cpu(), want.info["count_last"])
    assert torch.equal(got.info["ratio"].cpu(), want.info["ratio"])
