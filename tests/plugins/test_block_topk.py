"""``block_topk`` estimator and preset (plugins/block_topk), against brute-force loops of the definition.

Definition: ``qbar_i`` = mean of q-block ``i``'s rows, ``kbar_j`` = mean of kv-block ``j``'s keys (partial
blocks average their own rows); score ``s_ij = qbar_i . kbar_j / sqrt(D)`` with the head's KV head
(``per="head"``) or with ``qbar`` also averaged over the query heads of a KV group (``per="group"``);
softmax over the visible kv-blocks of the q-block, ``-inf`` elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, ConfigError
from sparsekit.plugins.block_topk.estimator import BlockTopKEstimator

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance


def bf_block_topk(q, k, bq, bk, causal, per):
    q, k = q.double(), k.double()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    grp = Hq // Hkv
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    G = Hq if per == "head" else Hkv
    out = torch.full((B, G, nQb, nKb), float("-inf"), dtype=torch.float64)
    for b in range(B):
        for gi in range(G):
            heads = [gi] if per == "head" else list(range(gi * grp, (gi + 1) * grp))
            kv = heads[0] // grp
            for i in range(nQb):
                rows = list(range(i * bq, min((i + 1) * bq, Nq)))
                qbar = sum(sum(q[b, h, r] for r in rows) / len(rows) for h in heads) / len(heads)
                last_pos = Nk - Nq + rows[-1]
                n_vis = (last_pos // bk + 1) if causal else nKb
                logits = []
                for j in range(n_vis):
                    cols = list(range(j * bk, min((j + 1) * bk, Nk)))
                    kbar = sum(k[b, kv, c] for c in cols) / len(cols)
                    logits.append(float(qbar @ kbar) / math.sqrt(D))
                mx = max(logits)
                ex = [math.exp(x - mx) for x in logits]
                for j, e in enumerate(ex):
                    out[b, gi, i, j] = e / sum(ex)
    return out


def rand_qk(seed, B, Hq, Hkv, Nq, Nk, D):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=torch.float64) * 3
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64) * 3
    return q, k


CASES = [
    # (B, Hq, Hkv, Nq, Nk, D, bq, bk, causal)
    pytest.param(1, 2, 2, 128, 128, 16, 16, 16, True, id="mha-aligned"),
    pytest.param(2, 4, 1, 75, 75, 16, 16, 32, True, id="gqa4-ragged"),
    pytest.param(1, 7, 1, 40, 130, 32, 32, 16, True, id="gqa7-chunked"),
    pytest.param(1, 4, 2, 50, 83, 16, 16, 16, True, id="gqa2-misaligned"),
    pytest.param(1, 2, 1, 48, 70, 16, 16, 16, False, id="non-causal"),
]


@pytest.mark.parametrize("per", ["head", "group"])
@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bq,bk,causal", CASES)
def test_estimator_matches_brute_force(B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, per):
    q, k = rand_qk(4, B, Hq, Hkv, Nq, Nk, D)
    problem = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    scores = BlockTopKEstimator(per=per).estimate(problem)
    ref = bf_block_topk(q, k, bq, bk, causal, per)
    assert scores.kind == "mass" and scores.scores.dtype == torch.float32
    assert scores.groups == (Hq if per == "head" else Hkv)
    got = scores.scores.double()
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], atol=2e-6, rtol=1e-5)


def test_varlen_through_pipeline_equals_per_sequence():
    q, k = rand_qk(6, 2, 4, 2, 64, 90, 16)
    q_lens, k_lens = torch.tensor([40, 64]), torch.tensor([70, 90])
    attn = sparsekit.build(estimator="block_topk(per='group')", budget="fixed(blocks=2,ratio=None)",
                           kernel="torch", block_q=16, block_k=16)
    plan = attn.plan(q, k, q_lens=q_lens, k_lens=k_lens)
    for b in range(2):
        ql, kl = int(q_lens[b]), int(k_lens[b])
        ref = bf_block_topk(q[b : b + 1, :, :ql], k[b : b + 1, :, :kl], 16, 16, True, "group")[0]
        got = plan.scores.scores[b].double()
        nq, nk = ref.shape[1], ref.shape[2]
        fin = torch.isfinite(ref)
        torch.testing.assert_close(got[:, :nq, :nk][fin], ref[fin], atol=2e-6, rtol=1e-5)
        assert bool(torch.isinf(got[:, nq:]).all()) and bool(torch.isinf(got[:, :, nk:]).all())
    plan.layout.validate()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("Hq,Hkv,Nq,Nk", [(4, 4, 100, 100), (4, 1, 60, 150), (7, 1, 90, 90)],
                         ids=["mha", "gqa4-chunked", "gqa7"])
def test_preset_at_full_budget_equals_dense(dtype, Hq, Hkv, Nq, Nk):
    gen = torch.Generator().manual_seed(22)
    q = torch.randn(1, Hq, Nq, 32, generator=gen).to(dtype)
    k = torch.randn(1, Hkv, Nk, 32, generator=gen).to(dtype)
    v = torch.randn(1, Hkv, Nk, 32, generator=gen).to(dtype)
    attn = sparsekit.build("block_topk", budget={"blocks": 10**6}, kernel="torch", block_q=16, block_k=16)
    out, plan = attn(q, k, v, return_plan=True)
    assert torch.equal(plan.layout.to_dense(), sparsekit.BlockLayout.full(plan.problem).to_dense())
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double())
    naive = sparsekit.dense_attention(q, k, v, compute_dtype=dtype)
    err = float((out.double() - ref).abs().max())
    assert err <= tolerance(out, naive, ref, 2e-6 if dtype == torch.float32 else 2e-3)


def test_preset_config_and_sparsity():
    attn = sparsekit.build("block_topk")
    assert attn.estimator.spec() == {"name": "block_topk", "per": "head"}
    assert attn.budgeter.spec() == {"name": "fixed", "blocks": 50, "ratio": None} and attn.mask.name == "topk"
    q, k = rand_qk(2, 1, 2, 1, 300, 300, 16)
    plan = sparsekit.build("block_topk", budget={"blocks": 3}, block_q=16, block_k=16).plan(q.float(), k.float())
    plan.layout.validate()
    assert 0 < plan.density < 1


@pytest.mark.parametrize("bad", ["kv", 1, None])
def test_invalid_per(bad):
    with pytest.raises(ConfigError, match="per="):
        sparsekit.build(estimator={"name": "block_topk", "per": bad}, budget="fixed")
