"""``vertical_slash`` estimator and preset (plugins/vertical_slash), against brute-force loops of the definition.

Definition (docs/strategies/vertical_slash.md): the last ``last_q`` rows of each real head attend exactly to
all keys; ``vertical[c]`` sums a column's probabilities over those rows, ``slash[d]`` sums the probabilities
at diagonal offset ``d = pos(row) - c`` (row ``r`` at ``pos = Nk - Nq + r``). Cell ``(i, j)`` = mean over the
rows ``p`` of q-block ``i`` of ``sum_{c in block j, c <= p (causal)} vertical[c] + slash[p - c]``, normalised
over the visible cells of the q-block; ``-inf`` elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, ConfigError
from sparsekit.plugins.vertical_slash.estimator import VerticalSlashEstimator

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance


def bf_vertical_slash(q: torch.Tensor, k: torch.Tensor, last_q: int, bq: int, bk: int, causal: bool) -> torch.Tensor:
    """float64 [B, Hq, nQb, nKb] from the definition, with explicit loops."""
    q, k = q.double(), k.double()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    grp = Hq // Hkv
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    L = min(last_q, Nq)
    out = torch.full((B, Hq, nQb, nKb), float("-inf"), dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kh = k[b, h // grp]
            vert = torch.zeros(Nk, dtype=torch.float64)
            slash: dict[int, float] = {}
            for r in range(Nq - L, Nq):
                pos = Nk - Nq + r
                n = pos + 1 if causal else Nk
                p = torch.softmax((kh[:n] @ q[b, h, r]) / math.sqrt(D), dim=0)
                for c in range(n):
                    vert[c] += p[c]
                    slash[pos - c] = slash.get(pos - c, 0.0) + float(p[c])
            for i in range(nQb):
                rows = range(i * bq, min((i + 1) * bq, Nq))
                last_pos = Nk - Nq + rows[-1]
                n_vis = (last_pos // bk + 1) if causal else nKb
                cells = []
                for j in range(n_vis):
                    tot = 0.0
                    for r in rows:
                        pos = Nk - Nq + r
                        for c in range(j * bk, min((j + 1) * bk, Nk)):
                            if causal and c > pos:
                                continue
                            tot += float(vert[c]) + slash.get(pos - c, 0.0)
                    cells.append(tot / len(rows))
                z = sum(cells)
                for j, x in enumerate(cells):
                    out[b, h, i, j] = x / z
    return out


def rand_qk(seed: int, B: int, Hq: int, Hkv: int, Nq: int, Nk: int, D: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=torch.float64) * 1.5
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    return q, k


CASES = [
    # (B, Hq, Hkv, Nq, Nk, D, bq, bk, last_q, causal)
    pytest.param(1, 2, 2, 96, 96, 16, 16, 16, 16, True, id="mha-aligned"),
    pytest.param(2, 4, 1, 70, 70, 16, 16, 32, 24, True, id="gqa4-ragged-bq16-bk32"),
    pytest.param(1, 7, 1, 40, 100, 16, 32, 16, 64, True, id="gqa7-chunked-Nq<Nk-lastq>Nq"),
    pytest.param(1, 2, 1, 50, 83, 32, 16, 16, 8, True, id="gqa2-chunked-misaligned"),
    pytest.param(1, 2, 2, 48, 64, 16, 16, 16, 16, False, id="non-causal"),
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bq,bk,last_q,causal", CASES)
def test_estimator_matches_brute_force(B, Hq, Hkv, Nq, Nk, D, bq, bk, last_q, causal):
    q, k = rand_qk(11, B, Hq, Hkv, Nq, Nk, D)
    problem = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    scores = VerticalSlashEstimator(last_q=last_q).estimate(problem)
    ref = bf_vertical_slash(q, k, last_q, bq, bk, causal)
    assert scores.kind == "mass" and scores.scores.dtype == torch.float32 and scores.groups == Hq
    got = scores.scores.double()
    assert torch.equal(torch.isinf(got), torch.isinf(ref)), "-inf exactly on invisible blocks"
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], atol=2e-6, rtol=1e-5)


def test_step_mb_chunking_does_not_change_scores():
    q, k = rand_qk(3, 1, 8, 4, 64, 64, 16)
    problem = AttentionProblem.create(q, k, block_q=16, block_k=16)
    a = VerticalSlashEstimator(last_q=32).estimate(problem).scores
    b = VerticalSlashEstimator(last_q=32, step_mb=1).estimate(problem).scores  # one KV head per step
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert VerticalSlashEstimator(last_q=32, step_mb=1).label == "vertical_slash(last_q=32)"


def test_varlen_through_pipeline_equals_per_sequence():
    """With q_lens/k_lens the pipeline calls the estimator per trimmed sequence; padding is -inf."""
    q, k = rand_qk(5, 2, 4, 2, 64, 80, 16)
    q_lens, k_lens = torch.tensor([64, 30]), torch.tensor([80, 45])
    attn = sparsekit.build(estimator="vertical_slash(last_q=16)", budget="fixed(blocks=2,ratio=None)", mask="topk",
                           kernel="torch", block_q=16, block_k=16)
    plan = attn.plan(q, k, q_lens=q_lens, k_lens=k_lens)
    for b in range(2):
        ql, kl = int(q_lens[b]), int(k_lens[b])
        ref = bf_vertical_slash(q[b : b + 1, :, :ql], k[b : b + 1, :, :kl], 16, 16, 16, True)[0]
        got = plan.scores.scores[b].double()
        nq, nk = ref.shape[1], ref.shape[2]
        fin = torch.isfinite(ref)
        torch.testing.assert_close(got[:, :nq, :nk][fin], ref[fin], atol=2e-6, rtol=1e-5)
        assert bool(torch.isinf(got[:, nq:]).all()) and bool(torch.isinf(got[:, :, nk:]).all())
    plan.layout.validate()


def test_scores_are_row_normalised_mass():
    q, k = rand_qk(8, 1, 4, 2, 100, 130, 32)
    problem = AttentionProblem.create(q, k, block_q=32, block_k=16)
    s = VerticalSlashEstimator().estimate(problem).scores
    row = torch.where(torch.isinf(s), 0.0, s).sum(-1)
    torch.testing.assert_close(row, torch.ones_like(row), atol=1e-5, rtol=0)
    assert bool((s[torch.isfinite(s)] >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("Hq,Hkv,Nq,Nk", [(4, 4, 100, 100), (4, 1, 60, 150), (7, 1, 90, 90)],
                         ids=["mha", "gqa4-chunked", "gqa7"])
def test_preset_at_full_budget_equals_dense(dtype, Hq, Hkv, Nq, Nk):
    gen = torch.Generator().manual_seed(21)
    q = torch.randn(1, Hq, Nq, 32, generator=gen).to(dtype)
    k = torch.randn(1, Hkv, Nk, 32, generator=gen).to(dtype)
    v = torch.randn(1, Hkv, Nk, 32, generator=gen).to(dtype)
    attn = sparsekit.build("vertical_slash", budget={"blocks": 10**6}, kernel="torch", block_q=16, block_k=16)
    out, plan = attn(q, k, v, return_plan=True)
    assert torch.equal(plan.layout.to_dense(), sparsekit.BlockLayout.full(plan.problem).to_dense())
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double())
    naive = sparsekit.dense_attention(q, k, v, compute_dtype=dtype)
    err = float((out.double() - ref).abs().max())
    assert err <= tolerance(out, naive, ref, 2e-6 if dtype == torch.float32 else 2e-3)


def test_preset_config_and_sparsity():
    attn = sparsekit.build("vertical_slash")
    assert attn.estimator.spec() == {"name": "vertical_slash", "last_q": 64, "step_mb": 256}
    assert attn.budgeter.spec() == {"name": "fixed", "blocks": 56, "ratio": None} and attn.mask.name == "topk"
    q, k = rand_qk(2, 1, 2, 1, 300, 300, 16)
    plan = sparsekit.build("vertical_slash", budget={"blocks": 3}, block_q=16, block_k=16).plan(q.float(), k.float())
    plan.layout.validate()
    assert 0 < plan.density < 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_invalid_last_q(bad):
    with pytest.raises(ConfigError, match="last_q"):
        sparsekit.build(estimator={"name": "vertical_slash", "last_q": bad}, budget="fixed")


def test_two_level_prefix_sum_matches_cumsum():
    from sparsekit.plugins.vertical_slash.estimator import _cumsum

    x = torch.randn(2, 3, 70001, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(_cumsum(x), x.cumsum(-1), atol=1e-9, rtol=1e-12)
