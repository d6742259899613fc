"""XAttention: the ``xattention`` estimator (antidiagonal strided scores) against a brute-force loop over strided
rows and columns written from its definition (float64), the ``xattention`` preset, and its defining behaviour:
the ``cumulative`` mask keeps blocks in descending score order until the threshold mass is reached."""

from __future__ import annotations

import math

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, BlockScores, ConfigError, InputError
from sparsekit.plugins.xattention.estimator import XAttentionEstimator

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance

NEG_INF = float("-inf")


def bf_visible(Nq, Nk, bq, bk, causal, ql=None, kl=None):
    """Visible kv-blocks per q-block of one sequence (row r at position kl - ql + r)."""
    ql = Nq if ql is None else ql
    kl = Nk if kl is None else kl
    out = []
    for i in range(math.ceil(Nq / bq)):
        last = min((i + 1) * bq, ql) - 1
        out.append(0 if last < i * bq else ((kl - ql + last) // bk + 1 if causal else math.ceil(kl / bk)))
    return out


def bf_xattention(q, k, stride, bq, bk, causal, scale=None):
    """float64 [B, Hq, nQb, nKb] from the definition: strided row i vs strided column j scores
    sum_t q[i*stride + t] . k[j*stride + stride-1-t] * scale / stride (zero padding), visible when the column's
    first key is visible to the group's last valid query; softmax per strided row; summed per block cell;
    each q-block row divided by its total."""
    q, k = q.double(), k.double()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    grp = Hq // Hkv
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    scale = 1 / math.sqrt(D) if scale is None else scale
    qp = torch.zeros(B, Hq, nQb * bq, D, dtype=torch.float64)
    qp[:, :, :Nq] = q
    kp = torch.zeros(B, Hkv, nKb * bk, D, dtype=torch.float64)
    kp[:, :, :Nk] = k
    vis = bf_visible(Nq, Nk, bq, bk, causal)
    out = torch.full((B, Hq, nQb, nKb), NEG_INF, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kh = kp[b, h // grp]
            cell = torch.zeros(nQb, nKb, dtype=torch.float64)
            for i in range(nQb * bq // stride):
                if i * stride >= Nq:
                    continue
                pos_last = Nk - Nq + min(i * stride + stride - 1, Nq - 1)
                cols = [j for j in range(nKb * bk // stride)
                        if j * stride < Nk and (not causal or j * stride <= pos_last)]
                logits = []
                for j in cols:
                    dot = 0.0
                    for t in range(stride):
                        dot += float(qp[b, h, i * stride + t] @ kh[j * stride + stride - 1 - t])
                    logits.append(dot * scale / stride)
                p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                for j, pj in zip(cols, p.tolist()):
                    cell[i * stride // bq, j * stride // bk] += pj
            for I in range(nQb):
                if vis[I]:
                    out[b, h, I, : vis[I]] = cell[I, : vis[I]] / cell[I].sum()
    return out


def rand_qkv(seed, B, Hq, Hkv, Nq, Nk, D, q_mult=1.5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=torch.float64) * q_mult
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    return q, k, v


CASES = [
    # (B, Hq, Hkv, Nq, Nk, bq, bk, D, stride, causal, step_mb)
    pytest.param(1, 2, 2, 128, 128, 32, 32, 16, 8, True, 256, id="mha-aligned-s8"),
    pytest.param(2, 4, 1, 101, 101, 32, 16, 16, 4, True, 256, id="gqa4-ragged-partial-group-s4"),
    pytest.param(1, 7, 1, 45, 110, 16, 16, 16, 16, True, 256, id="gqa7-chunked-s16"),
    pytest.param(1, 4, 2, 70, 98, 16, 32, 8, 4, True, 1, id="chunked-unaligned-offset-steps"),
    pytest.param(1, 2, 1, 90, 130, 32, 32, 16, 8, False, 256, id="noncausal"),
    pytest.param(1, 2, 2, 100, 60, 32, 16, 16, 4, False, 256, id="noncausal-Nq>Nk"),
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,bq,bk,D,stride,causal,step_mb", CASES)
def test_xattention_matches_definition(B, Hq, Hkv, Nq, Nk, bq, bk, D, stride, causal, step_mb):
    q, k, _ = rand_qkv(100 + Nq + 3 * Nk + Hq, B, Hq, Hkv, Nq, Nk, D)
    prob = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    scores = XAttentionEstimator(stride=stride, step_mb=step_mb).estimate(prob)
    ref = bf_xattention(q, k, stride, bq, bk, causal)
    assert scores.kind == "mass" and scores.scores.dtype == torch.float32
    assert tuple(scores.scores.shape) == (B, Hq, prob.nQb, prob.nKb)  # one group per query head
    got = scores.scores.double()
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref)), "-inf (invisible blocks) pattern differs"
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-5, atol=1e-6)
    rows = got.clamp_min(0).sum(-1)  # every q-block row sums to 1
    torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-5)


def test_xattention_custom_scale_and_bf16():
    q, k, _ = rand_qkv(7, 1, 4, 2, 96, 96, 16)
    q, k = q.bfloat16(), k.bfloat16()
    prob = AttentionProblem.create(q, k, block_q=32, block_k=32, scale=0.5)
    got = XAttentionEstimator(stride=4).estimate(prob).scores
    ref = bf_xattention(q, k, 4, 32, 32, True, scale=0.5)
    fin = torch.isfinite(ref)
    assert got.dtype == torch.float32 and torch.equal(fin, torch.isfinite(got))
    # 16-bit inputs: the strided q.k products run in bf16 (tensor cores; bf16-rounded logits), softmax in fp32
    torch.testing.assert_close(got.double()[fin], ref[fin], rtol=8e-3, atol=1e-4)


def test_xattention_varlen_equals_per_sequence():
    q, k, v = rand_qkv(8, 3, 4, 2, 100, 150, 16)
    ql, kl = [100, 40, 77], [150, 40, 120]
    attn = sparsekit.build("xattention", estimator={"stride": 4}, kernel="torch", block_q=32, block_k=32)
    plan = attn.plan(q, k, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl))
    for b in range(3):
        one = attn.plan(q[b : b + 1, :, : ql[b]], k[b : b + 1, :, : kl[b]])
        nq, nk = one.scores.scores.shape[2:]
        assert torch.equal(plan.scores.scores[b : b + 1, :, :nq, :nk], one.scores.scores)
        assert bool(torch.isneginf(plan.scores.scores[b, :, nq:]).all())
        c = one.layout.kv_counts
        assert torch.equal(plan.layout.kv_counts[b : b + 1, :, :nq], c)
    plan.layout.validate()


# ------------------------------------------------------------------------------------------------
# defining behaviour: descending score order until the threshold mass


def test_preset_mask_on_hand_made_scores():
    """Through the preset's own budget and mask (gamma=0.9): q-block 4 of 5 visible blocks holds masses
    .05/.40/.30/.20/.05; forced sink 0 and diagonal 4 hold .10, then .40 (block 1), .30 (block 2) -> .80 < .9,
    then .20 (block 3) -> 1.0: all kept. q-block 3: .05/.60/.30/.05, forced .10 + .60 = .70, + .30 = 1.0."""
    attn = sparsekit.build("xattention", kernel="torch", block_q=32, block_k=32)
    q, k, _ = rand_qkv(9, 1, 1, 1, 160, 160, 16)
    prob = AttentionProblem.create(q, k, block_q=32, block_k=32)
    s = torch.full((1, 1, 5, 5), NEG_INF)
    s[0, 0, 4] = torch.tensor([0.05, 0.40, 0.30, 0.20, 0.05])
    s[0, 0, 3, :4] = torch.tensor([0.05, 0.60, 0.30, 0.05])
    s[0, 0, 2, :3] = torch.tensor([0.90, 0.05, 0.05])
    s[0, 0, 1, :2] = torch.tensor([0.5, 0.5])
    s[0, 0, 0, :1] = 1.0
    layout = attn.mask.build(prob, BlockScores(s, "mass"), attn.budgeter.allocate(prob, None))
    rows = [layout.kv_indices[0, 0, i, : int(layout.kv_counts[0, 0, i])].tolist() for i in range(5)]
    assert rows == [[0], [0, 1], [0, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    s[0, 0, 4] = torch.tensor([0.05, 0.50, 0.36, 0.04, 0.05])  # .10 + .50 + .36 = .96 >= .9: block 3 dropped
    layout = attn.mask.build(prob, BlockScores(s, "mass"), attn.budgeter.allocate(prob, None))
    assert layout.kv_indices[0, 0, 4, : int(layout.kv_counts[0, 0, 4])].tolist() == [0, 1, 2, 4]


@pytest.mark.parametrize("gamma", [0.5, 0.8, 0.9])
def test_preset_keeps_descending_until_threshold_on_real_inputs(gamma):
    """On real inputs: per row, the kept blocks contain sink and diagonal, reach gamma of the row's normalized
    score mass, every kept non-forced block outscores every dropped block, and dropping the weakest kept
    non-forced block would fall below gamma (smallest such set)."""
    B, Hq, Hkv, N, blk = 1, 4, 2, 512, 32
    q, k, _ = rand_qkv(10, B, Hq, Hkv, N, N, 32, q_mult=3.0)
    attn = sparsekit.build("xattention", estimator={"stride": 8}, budget={"gamma": gamma}, kernel="torch",
                           block_q=blk, block_k=blk)
    plan = attn.plan(q, k)
    s = plan.scores.scores.double()
    nb = N // blk
    sparse_rows = 0
    for h in range(Hq):
        for i in range(nb):
            kept = plan.layout.kv_indices[0, h, i, : int(plan.layout.kv_counts[0, h, i])].tolist()
            row = s[0, h, i, : i + 1]
            norm = row / row.sum()
            forced = {0, i}
            assert forced <= set(kept)
            free = [j for j in kept if j not in forced]
            dropped = [j for j in range(i + 1) if j not in kept]
            assert float(norm[kept].sum()) >= gamma - 1e-6
            if free:
                assert float(norm[kept].sum() - norm[free].min()) < gamma + 1e-6
                if dropped:
                    assert float(norm[free].min()) >= float(norm[dropped].max())
            sparse_rows += bool(dropped)
    assert sparse_rows > 0, "the inputs should make some rows sparse"
    plan.layout.validate()


# ------------------------------------------------------------------------------------------------
# full budget, preset, options


@pytest.mark.parametrize("Hq,Hkv,Nq,Nk,causal,lens", [
    (4, 4, 150, 150, True, None), (8, 2, 70, 230, True, None), (7, 1, 96, 96, True, None),
    (4, 1, 90, 130, False, None), (4, 2, 100, 100, True, ([100, 61], [100, 90])),
])
def test_full_budget_equals_dense(Hq, Hkv, Nq, Nk, causal, lens):
    q, k, v = rand_qkv(Nq + Nk + Hq, 2, Hq, Hkv, Nq, Nk, 32)
    q, k, v = q.float(), k.float(), v.float()
    kw = {"causal": causal}
    if lens:
        kw.update(q_lens=torch.tensor(lens[0]), k_lens=torch.tensor(lens[1]))
    attn = sparsekit.build("xattention", budget={"gamma": 1.0}, kernel="torch", block_q=32, block_k=32)
    out, plan = attn(q, k, v, return_plan=True, **kw)
    assert plan.density == 1.0
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double(), **kw)
    naive = sparsekit.dense_attention(q, k, v, **kw)
    if lens:  # padded rows are not compared
        for b, n in enumerate(lens[0]):
            out[b, :, n:] = ref[b, :, n:].float()
    assert float((out.double() - ref).abs().max()) <= tolerance(out, naive, ref, 2e-6)


def test_preset_defaults():
    attn = sparsekit.build("xattention")
    assert attn.name == ("xattention(stride=8)+cumulative(gamma=0.9,min_budget=0,max_budget=0)"
                         "+cumulative(sink=True,diagonal=True)+auto")
    assert (attn.block_q, attn.block_k) == (128, 128)
    assert "xattention" in sparsekit.get_registry().presets


@pytest.mark.parametrize("stride", [0, 2, 5, 32, 8.0, True, "8"])
def test_bad_stride(stride):
    with pytest.raises(ConfigError, match=r"stride=.* \(allowed: 4, 8, 16\)\. Fix: pass stride=8"):
        XAttentionEstimator(stride=stride)
    with pytest.raises(ConfigError, match="stride"):
        sparsekit.build("xattention", estimator={"stride": stride})


def test_stride_must_divide_block_sizes():
    q, k, _ = rand_qkv(11, 1, 2, 2, 96, 96, 16)
    prob = AttentionProblem(q, k, block_q=24, block_k=32)  # not reachable through create(); direct construction
    with pytest.raises(InputError, match=r"stride=16 does not divide block_q=24"):
        XAttentionEstimator(stride=16).estimate(prob)


def test_unknown_option():
    with pytest.raises(ConfigError, match=r"'strides' \(did you mean 'stride'\?\)"):
        sparsekit.build("xattention", estimator={"strides": 8})
