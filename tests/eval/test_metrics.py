"""Every metric against its brute-force definition on small inputs (token-level softmax, block masks by loops)."""

from __future__ import annotations

import math
import time

import pytest
import torch

import sparsekit
from sparsekit.layout import BlockLayout
from sparsekit.metrics import (attention_recall, attention_recall_per_head, density, density_per_head, head_stats,
                               relative_error, relative_error_per_head, time_ms)


def _inputs(B=2, Hq=4, Hkv=2, Nq=100, Nk=100, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=torch.float64) * 2
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64) * 2
    return q, k


def _visible(Nq, Nk, bq, bk):
    """Brute force: block (i, j) is visible if some row of q-block i sees some key of kv-block j (bottom-right)."""
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    vis = torch.zeros(nQb, nKb, dtype=torch.bool)
    for r in range(Nq):
        for c in range(Nk):
            if c <= Nk - Nq + r:
                vis[r // bq, c // bk] = True
    return vis


def _random_layout(B, H, Nq, Nk, bq, bk, seed=1, p=0.5):
    vis = _visible(Nq, Nk, bq, bk)
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, H, *vis.shape, generator=g) < p) & vis
    return BlockLayout.from_dense(mask, Nq, Nk, block_q=bq, block_k=bk), mask, vis


def _brute_recall(q, k, mask, bq, bk):
    """[B, Hq, Nq]: softmax mass of each row inside its kept blocks, token by token."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    out = torch.zeros(B, Hq, Nq, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            s = q[b, h] @ k[b, h // (Hq // Hkv)].T / math.sqrt(D)
            for r in range(Nq):
                cols = [c for c in range(Nk) if c <= Nk - Nq + r]
                p = torch.softmax(s[r, cols], dim=0)
                out[b, h, r] = sum(float(p[i]) for i, c in enumerate(cols) if mask[b, h, r // bq, c // bk])
    return out


@pytest.mark.parametrize("Nq,Nk", [(100, 100), (40, 100)])  # fresh prefill and chunked prefill (Nq < Nk)
def test_density_matches_brute_force(Nq, Nk):
    layout, mask, vis = _random_layout(2, 3, Nq, Nk, 16, 16)
    assert density(layout) == pytest.approx(float(mask.sum()) / (float(vis.sum()) * 2 * 3), abs=1e-12)
    per_head = mask.flatten(2).sum(-1).double() / float(vis.sum())
    assert torch.allclose(density_per_head(layout).double(), per_head, atol=1e-6)


@pytest.mark.parametrize("Nq,Nk", [(100, 100), (40, 100)])
def test_recall_all_rows_matches_brute_force(Nq, Nk):
    q, k = _inputs(Nq=Nq, Nk=Nk)
    layout, mask, _ = _random_layout(2, 4, Nq, Nk, 16, 32)
    ref = _brute_recall(q, k, mask, 16, 32)  # [B, Hq, Nq]
    assert attention_recall(q, k, layout, rows=None) == pytest.approx(float(ref.mean()), abs=1e-6)
    per_head = attention_recall_per_head(q, k, layout, rows=None)
    assert per_head.shape == (2, 4)
    assert torch.allclose(per_head, ref.mean(-1), atol=1e-6)


def test_recall_sampled_rows_are_exact_on_those_rows():
    q, k = _inputs(Nq=100, Nk=100)
    layout, mask, _ = _random_layout(2, 4, 100, 100, 16, 16, seed=3)
    ref = _brute_recall(q, k, mask, 16, 16)
    gen = torch.Generator().manual_seed(7)  # the documented sampling: randperm of the other rows + the last row
    rows = [torch.cat([torch.randperm(99, generator=gen)[:9], torch.tensor([99])]) for _ in range(2)]
    want = torch.stack([ref[b][:, rows[b]].mean(-1) for b in range(2)])
    got = attention_recall_per_head(q, k, layout, rows=10, seed=7)
    assert torch.allclose(got, want, atol=1e-6)
    assert attention_recall(q, k, layout, rows=10, seed=7) == pytest.approx(float(want.mean()), abs=1e-6)
    # memory steps over KV heads do not change the result
    assert torch.allclose(attention_recall_per_head(q, k, layout, rows=10, seed=7, step_mb=0), got, atol=1e-12)


def test_recall_of_full_layout_is_one():
    q, k = _inputs(B=1)
    problem = sparsekit.AttentionProblem.create(q, k, block_q=16, block_k=16)
    assert attention_recall(q, k, BlockLayout.full(problem), rows=None) == pytest.approx(1.0, abs=1e-5)  # float32 softmax


def test_relative_error_matches_definition():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 20, 8, generator=g)
    out = ref + 0.1 * torch.randn(2, 3, 20, 8, generator=g)
    d = (out.double() - ref.double())
    assert relative_error(out, ref) == pytest.approx(math.sqrt(float((d ** 2).sum())) / math.sqrt(float((ref.double() ** 2).sum())))
    per_head = relative_error_per_head(out, ref)
    for b in range(2):
        for h in range(3):
            want = math.sqrt(float((d[b, h] ** 2).sum())) / math.sqrt(float((ref[b, h].double() ** 2).sum()))
            assert float(per_head[b, h]) == pytest.approx(want, rel=1e-12)
    assert relative_error(ref, ref) == 0.0


def test_head_stats_of_a_plan():
    q, k = _inputs(B=1, Nq=128, Nk=128, D=32)
    v = torch.randn_like(k)
    attn = sparsekit.build("proxyattn", budget={"gamma": 0.8, "min_budget": 0}, kernel="torch", block_q=16, block_k=16)
    out, plan = attn(q, k, v, return_plan=True)
    ref = sparsekit.dense_attention(q, k, v)
    stats = head_stats(plan, q, k, out, ref, rows=None)
    mask = plan.layout.to_dense()
    vis = _visible(128, 128, 16, 16)
    assert stats["density"] == pytest.approx((mask[0].flatten(1).sum(-1).double() / float(vis.sum())).tolist())
    assert stats["recall"] == pytest.approx(_brute_recall(q, k, mask, 16, 16)[0].mean(-1).tolist(), abs=1e-6)
    assert stats["budget_ratio"] == pytest.approx(plan.budget.info["ratio"][0].tolist())
    assert stats["rel_error"] == pytest.approx(relative_error_per_head(out, ref)[0].tolist())
    fixed = sparsekit.build("proxyattn", budget="fixed(ratio=0.5)", block_q=16, block_k=16).plan(q, k)
    assert head_stats(fixed, q, k, rows=8)["budget_ratio"] is None  # the fixed budgeter reports no per-head ratio


def test_time_ms_median_warmup_and_result():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.004)
        return len(calls)

    ms, result = time_ms(work, "cpu", repeats=3, warmup=2)
    assert len(calls) == 5 and result == 5
    assert 4.0 <= ms < 200
