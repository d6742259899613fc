"""Tests of the Triton last-block mass kernels (``kernels/last_block_mass``) against their plain-torch twin.

Without a GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1 must be set before the
kernel module is imported), so sizes stay small. The kernels read q/k in their own dtype and compute in
fp32 (16-bit products are exact in fp32), so they match the twin on the same inputs upcast within
rtol 1e-4 for every dtype. Budgets and ``topk`` layouts built from kernel and twin masses are compared
exactly.
"""

from __future__ import annotations

import os

if not os.environ.get("TRITON_INTERPRET") and not __import__("torch").cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import math

import pytest
import torch

from sparsekit import AttentionProblem, ConfigError, UnsupportedError
from sparsekit.kernels.last_block_mass import last_block_mass, last_block_mass_naive, not_supported_reasons
from sparsekit.kernels.last_block_mass import op as lbm_op
from sparsekit.plugins.common.masks import TopKMask
from sparsekit.plugins.proxyattn.budget import DynamicBudget
from sparsekit.plugins.proxyattn.estimator import ProxyEstimator

DEVICE = "cuda" if torch.cuda.is_available() and not lbm_op._INTERPRET else "cpu"

CASES = [
    # (B, Hq, Hkv, Nq, Nk, D, block_q, block_k, causal, dtype, split_blocks)
    pytest.param(1, 4, 4, 128, 128, 16, 32, 32, True, torch.float32, None, id="mha-aligned"),
    pytest.param(1, 28, 4, 200, 200, 16, 32, 32, True, torch.float32, 3, id="gqa28/4-ragged-split3"),
    pytest.param(1, 7, 1, 230, 230, 64, 64, 64, True, torch.float32, None, id="gqa7/1-ragged"),
    pytest.param(2, 4, 2, 100, 333, 32, 64, 32, True, torch.float32, 2, id="chunked-Nq<Nk-split2"),
    pytest.param(1, 4, 2, 20, 400, 32, 64, 64, True, torch.float32, 1, id="chunked-Nq<block_q-split1"),
    pytest.param(1, 4, 2, 200, 150, 32, 32, 16, False, torch.float32, None, id="noncausal-Nq>Nk-bk<bq"),
    pytest.param(1, 8, 2, 256, 256, 64, 64, 32, True, torch.bfloat16, None, id="bf16"),
    pytest.param(1, 28, 4, 170, 170, 32, 32, 32, True, torch.bfloat16, 4, id="bf16-gqa28/4"),
    pytest.param(1, 4, 2, 120, 300, 32, 16, 64, False, torch.float16, None, id="fp16-noncausal-chunked"),
]


def make_qk(seed, B, Hq, Hkv, Nq, Nk, D, dtype, q_mult=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen) * q_mult
    k = torch.randn(B, Hkv, Nk, D, generator=gen)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,bq,bk,causal,dtype,split", CASES)
def test_matches_twin_budget_and_layout_agree(B, Hq, Hkv, Nq, Nk, D, bq, bk, causal, dtype, split, one_pass):
    """Both kernel paths: the keys walked once (per-tile row statistics kept for the block sums) or twice (the
    block sums recompute the scores)."""
    q, k = make_qk(Nq * 5 + Nk + D, B, Hq, Hkv, Nq, Nk, D, dtype)
    kw = dict(block_q=bq, block_k=bk, causal=causal)
    config = {"one_pass": one_pass} if split is None else {"split_blocks": split, "one_pass": one_pass}
    out = last_block_mass(q, k, **kw, config=config)
    twin = last_block_mass_naive(q, k, **kw)  # float32 math on the same (upcast) inputs
    assert out.shape == (B, Hq, math.ceil(Nk / bk)) and out.dtype == torch.float32
    torch.testing.assert_close(out, twin, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.sum(-1), torch.ones(B, Hq, device=out.device), rtol=1e-5, atol=1e-5)

    if not one_pass:
        return  # the stage below runs the default (one-pass) path
    # the dynamic budget and the topk layout built from either mass are identical
    prob = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    scores = ProxyEstimator(impl="torch").estimate(prob)
    budgets, layouts = [], []
    for impl in ("torch", "triton"):
        budget = DynamicBudget(gamma=0.9, min_budget=0, impl=impl).allocate(prob, None)
        budgets.append(budget)
        layouts.append(TopKMask().build(prob, scores, budget))
    assert torch.equal(budgets[0].value, budgets[1].value)
    assert torch.equal(budgets[0].info["count_last"], budgets[1].info["count_last"])
    assert torch.equal(layouts[0].kv_counts, layouts[1].kv_counts)
    assert torch.equal(layouts[0].kv_indices, layouts[1].kv_indices)


def test_one_pass_tiles_inside_blocks_and_rule():
    # 4 kv-tiles per kv-block and a sequence end inside a block (its later tiles are never written)
    q, k = make_qk(19, 1, 4, 2, 70, 290, 32, torch.float32)
    for causal in (True, False):
        kw = dict(block_q=32, block_k=64, causal=causal)
        for split in (1, 2, None):
            one = last_block_mass(q, k, **kw, config={"block_n": 16, "split_blocks": split, "one_pass": True})
            two = last_block_mass(q, k, **kw, config={"block_n": 16, "split_blocks": split, "one_pass": False})
            torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-8)
            torch.testing.assert_close(one, last_block_mass_naive(q, k, **kw), rtol=1e-4, atol=1e-7)
    # Llama-3.1-8B shape at 128K: 32 heads, 1024 kv-blocks of two 64-key tiles, 128 rows -> 64 MiB
    assert lbm_op.tile_stats_bytes(32, 1024, 128, 64, 128) == 64 << 20
    with pytest.raises(ValueError, match=r"config.one_pass='yes' \(supported: None for automatic, True, False\)"):
        last_block_mass(q, k, config={"one_pass": "yes"})


def test_one_pass_block_sums_in_several_chunks():
    # 128 rows -> 32 kv-blocks per step of the block sums; one split of 45 blocks -> two steps, the last ragged
    q, k = make_qk(23, 1, 2, 1, 128, 711, 32, torch.float32)
    for causal in (True, False):
        kw = dict(block_q=128, block_k=16, causal=causal)
        cfg = {"block_n": 16, "split_blocks": 45}
        one = last_block_mass(q, k, **kw, config={**cfg, "one_pass": True})
        two = last_block_mass(q, k, **kw, config={**cfg, "one_pass": False})
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(one, last_block_mass_naive(q, k, **kw), rtol=1e-4, atol=1e-7)


def test_split_count_does_not_change_the_result():
    q, k = make_qk(7, 1, 4, 2, 64, 300, 32, torch.float32)
    kw = dict(block_q=32, block_k=32)
    ref = last_block_mass(q, k, **kw, config={"split_blocks": 10})  # one split
    for split in (1, 3, 4):
        torch.testing.assert_close(last_block_mass(q, k, **kw, config={"split_blocks": split}), ref,
                                   rtol=1e-5, atol=1e-8)


def test_scale_and_non_contiguous_inputs():
    q, k = make_qk(9, 1, 4, 2, 96, 96, 16, torch.float32)
    qt, kt = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    kw = dict(block_q=32, block_k=32, scale=0.5)
    torch.testing.assert_close(last_block_mass(qt, kt, **kw), last_block_mass_naive(q, k, **kw), rtol=1e-4, atol=1e-7)


def test_not_supported_reasons_and_config_errors():
    q = torch.zeros(1, 4, 64, 96)
    k = torch.zeros(1, 3, 64, 96, dtype=torch.float16)
    text = "\n".join(not_supported_reasons(q, k, block_q=100, block_k=128))
    assert "head_dim=96 (supported: 16, 32, 64, 128, 256)" in text
    assert "k.dtype=float16 differs from q.dtype=float32" in text
    assert "Hkv=3 does not divide Hq=4" in text
    assert "block_q=100 (supported:" in text
    q, k = make_qk(1, 1, 2, 1, 40, 40, 16, torch.float32)
    with pytest.raises(ValueError, match=r"config.split_blocks=0 \(supported: None or an integer >= 1\)"):
        last_block_mass(q, k, block_q=16, block_k=16, config={"split_blocks": 0})
    with pytest.raises(ValueError, match=r"scale=-1.0 \(supported: finite and > 0\)"):
        last_block_mass(q, k, block_q=16, block_k=16, scale=-1.0)


def test_budget_impl_option_and_cpu_refusal(monkeypatch):
    assert DynamicBudget(impl="triton").label == "dynamic(gamma=0.95,min_budget=2048)"
    with pytest.raises(ConfigError, match=r"impl='gpu' is not allowed"):
        DynamicBudget(impl="gpu")
    monkeypatch.setattr(lbm_op, "_INTERPRET", False)
    q, k = torch.zeros(1, 2, 32, 16), torch.zeros(1, 2, 32, 16)
    prob = AttentionProblem.create(q, k, block_q=16, block_k=16)
    with pytest.raises(UnsupportedError, match=r"(?s)impl='triton' cannot run .*TRITON_INTERPRET=1"):
        DynamicBudget(gamma=0.9, impl="triton").allocate(prob, None)
    # auto on CPU: plain torch, no kernel involved
    assert DynamicBudget(gamma=0.9, impl="auto").allocate(prob, None).value.shape == (1, 2, 2)
