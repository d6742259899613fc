"""FlexPrefill: the ``flexprefill`` estimator (per-head query-aware or vertical-slash block mass, chosen by the
Jensen-Shannon distance on the last q-block) against a brute-force loop implementation of its definition
(float64), its defining behaviour (a vertical head picks vertical-slash, a local-diagonal head query-aware),
the ``flexprefill`` preset, full budget == dense, and option errors."""

from __future__ import annotations

import math

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, ConfigError
from sparsekit.plugins.flexprefill.estimator import FlexPrefillEstimator

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance

NEG_INF = float("-inf")


def bf_visible(Nq, Nk, bq, bk, causal):
    out = []
    for i in range(math.ceil(Nq / bq)):
        last = min((i + 1) * bq, Nq) - 1
        out.append((Nk - Nq + last) // bk + 1 if causal else math.ceil(Nk / bk))
    return out


def bf_flexprefill(q, k, bq, bk, causal, tau, pattern="auto"):
    """(float64 scores [B, Hq, nQb, nKb], js [B, Hq], vertical_slash [B, Hq]) from the definition.

    Last m = min(bq, Nq) rows: exact softmax per row; v[key] and f[offset = pos - key] accumulate p / m.
    js = sqrt(JS(est, true)): true = v summed per kv-block, est = softmax(mean q of the m rows . mean k of each
    visible kv-block * scale). Query-aware rows: softmax(mean q of the q-block . mean k of the kv-block * scale).
    Vertical-slash rows: sum over the q-block's rows and visible keys of (v[key] + f[pos - key]) / 2, divided by
    the rows, normalized over the visible blocks."""
    q, k = q.double(), k.double()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    grp = Hq // Hkv
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    scale = 1 / math.sqrt(D)
    vis = bf_visible(Nq, Nk, bq, bk, causal)
    m = min(bq, Nq)
    out = torch.full((B, Hq, nQb, nKb), NEG_INF, dtype=torch.float64)
    js_all = torch.zeros(B, Hq, dtype=torch.float64)
    vs_all = torch.zeros(B, Hq, dtype=torch.bool)
    for b in range(B):
        for h in range(Hq):
            kh = k[b, h // grp]
            kmean = [kh[J * bk : min((J + 1) * bk, Nk)].mean(0) for J in range(nKb)]
            v = [0.0] * Nk
            f: dict[int, float] = {}
            for r in range(Nq - m, Nq):
                pos = Nk - Nq + r
                keys = [c for c in range(Nk) if not causal or c <= pos]
                p = torch.softmax(torch.stack([q[b, h, r] @ kh[c] for c in keys]) * scale, 0).tolist()
                for c, pc in zip(keys, p):
                    v[c] += pc / m
                    f[pos - c] = f.get(pos - c, 0.0) + pc / m
            true = [sum(v[J * bk : (J + 1) * bk]) for J in range(nKb)]
            qlast = q[b, h, Nq - m :].mean(0)
            est = torch.softmax(torch.stack([qlast @ kmean[J] for J in range(vis[-1])]) * scale, 0).tolist()
            est += [0.0] * (nKb - vis[-1])
            js = 0.0
            for a, c in zip(est, true):
                mid = (a + c) / 2
                js += 0.5 * (a * math.log(a / mid) if a > 0 else 0.0) + 0.5 * (c * math.log(c / mid) if c > 0 else 0.0)
            js = math.sqrt(max(js, 0.0))
            use_vs = js >= tau if pattern == "auto" else pattern == "vertical_slash"
            js_all[b, h], vs_all[b, h] = js, use_vs
            for I in range(nQb):
                rows = range(I * bq, min((I + 1) * bq, Nq))
                if not use_vs:
                    qm = q[b, h, I * bq : min((I + 1) * bq, Nq)].mean(0)
                    logits = torch.stack([qm @ kmean[J] for J in range(vis[I])]) * scale
                    out[b, h, I, : vis[I]] = torch.softmax(logits, 0)
                    continue
                cell = [0.0] * nKb
                for r in rows:
                    pos = Nk - Nq + r
                    for c in range(Nk):
                        if causal and c > pos:
                            continue
                        cell[c // bk] += (v[c] + f.get(pos - c, 0.0)) / 2
                cell = [x / len(rows) for x in cell[: vis[I]]]
                total = sum(cell)
                out[b, h, I, : vis[I]] = torch.tensor([x / total for x in cell], dtype=torch.float64)
    return out, js_all, vs_all


def rand_qkv(seed, B, Hq, Hkv, Nq, Nk, D, q_mult=1.5):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=torch.float64) * q_mult
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    return q, k, v


CASES = [
    # (B, Hq, Hkv, Nq, Nk, bq, bk, D, causal, step_mb)
    pytest.param(1, 2, 2, 96, 96, 32, 32, 16, True, 256, id="mha-aligned"),
    pytest.param(2, 4, 1, 75, 75, 16, 32, 16, True, 256, id="gqa4-ragged-bq<bk"),
    pytest.param(1, 7, 1, 40, 100, 32, 16, 8, True, 1, id="gqa7-chunked-bq>bk-steps"),
    pytest.param(1, 2, 1, 20, 90, 32, 16, 16, True, 256, id="Nq<block_q"),
    pytest.param(1, 2, 2, 60, 90, 16, 32, 16, False, 256, id="noncausal"),
    pytest.param(1, 2, 1, 90, 50, 32, 16, 16, False, 256, id="noncausal-Nq>Nk"),
]


@pytest.mark.parametrize("pattern", ["query_aware", "vertical_slash"])
@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,bq,bk,D,causal,step_mb", CASES)
def test_flexprefill_matches_definition(B, Hq, Hkv, Nq, Nk, bq, bk, D, causal, step_mb, pattern):
    q, k, _ = rand_qkv(300 + Nq + 5 * Nk + Hq, B, Hq, Hkv, Nq, Nk, D, q_mult=2.0)
    prob = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    scores = FlexPrefillEstimator(pattern=pattern, step_mb=step_mb).estimate(prob)
    ref, js, vs = bf_flexprefill(q, k, bq, bk, causal, 0.1, pattern)
    assert scores.kind == "mass" and scores.scores.dtype == torch.float32
    assert tuple(scores.scores.shape) == (B, Hq, prob.nQb, prob.nKb)
    got = scores.scores.double()
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores.info["js"].double(), js, rtol=1e-4, atol=1e-5)
    assert torch.equal(scores.info["vertical_slash"], vs)


def test_flexprefill_auto_choice_matches_definition():
    """pattern='auto': each head takes the model its JS distance asks for (tau between the heads' distances)."""
    q, k, _ = rand_qkv(12, 1, 8, 2, 128, 128, 16)
    q = q * torch.linspace(0.2, 3.0, 8, dtype=torch.float64)[None, :, None, None]  # varied sharpness
    _, js, _ = bf_flexprefill(q, k, 32, 32, True, 0.0, "query_aware")
    vals = sorted(js.flatten().tolist())
    gaps = [(b - a, (a + b) / 2) for a, b in zip(vals, vals[1:])]
    tau = max(gaps)[1]  # the middle of the widest gap: no head near the threshold
    ref, js_ref, vs = bf_flexprefill(q, k, 32, 32, True, tau)
    assert 0 < int(vs.sum()) < 8
    scores = FlexPrefillEstimator(tau=tau).estimate(AttentionProblem.create(q, k, block_q=32, block_k=32))
    assert torch.equal(scores.info["vertical_slash"], vs)
    fin = torch.isfinite(ref)
    torch.testing.assert_close(scores.scores.double()[fin], ref[fin], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# defining behaviour


def vertical_and_local_heads(N=512, D=32):
    """Head 0: every query attends strongly to key columns 37 and 300 (vertical). Head 1: queries and keys carry
    a slowly rotating position code, so each query attends to its neighbourhood (local diagonal)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, N, D, generator=gen) * 0.3
    k = torch.randn(1, 2, N, D, generator=gen) * 0.3
    v = torch.randn(1, 2, N, D, generator=gen)
    q[0, 0, :, 0] = 6.0
    k[0, 0, [37, 300 * N // 512], 0] = 6.0
    ang = 2 * math.pi * torch.arange(N).float() / 2048
    for t in (q, k):
        t[0, 1, :, 0], t[0, 1, :, 1] = 6.0 * torch.cos(ang), 6.0 * torch.sin(ang)
    return q, k, v


def test_vertical_head_picks_vertical_slash_and_local_head_query_aware():
    q, k, _ = vertical_and_local_heads()
    attn = sparsekit.build("flexprefill", budget={"min_budget": 0}, kernel="torch", block_q=32, block_k=32)
    plan = attn.plan(q, k)
    info = plan.scores.info
    assert info["vertical_slash"].tolist() == [[True, False]]
    js = info["js"][0].tolist()
    assert js[0] > 0.3 and js[1] < 0.09, js  # well clear of tau = 0.1
    rows = [[plan.layout.kv_indices[0, h, i, : int(plan.layout.kv_counts[0, h, i])].tolist() for i in range(16)]
            for h in range(2)]
    for i in range(16):  # vertical head: the blocks of columns 37 and 300 wherever visible
        assert {j for j in (1, 9) if j <= i} <= set(rows[0][i])
        assert set(rows[1][i]) <= {0} | set(range(max(0, i - 7), i + 1))  # local head: a band by the diagonal


def test_forced_patterns_override_choice():
    q, k, _ = vertical_and_local_heads(256)
    prob = AttentionProblem.create(q, k, block_q=32, block_k=32)
    for pattern, want in (("query_aware", [[False, False]]), ("vertical_slash", [[True, True]])):
        sc = FlexPrefillEstimator(pattern=pattern).estimate(prob)
        assert sc.info["vertical_slash"].tolist() == want


# ------------------------------------------------------------------------------------------------
# full budget, preset, varlen, options


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
    attn = sparsekit.build("flexprefill", budget={"gamma": 1.0, "min_budget": 0}, kernel="torch", block_q=32, block_k=32)
    out, plan = attn(q, k, v, return_plan=True, **kw)
    assert plan.density == 1.0
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double(), **kw)
    naive = sparsekit.dense_attention(q, k, v, **kw)
    if lens:
        for b, n in enumerate(lens[0]):
            out[b, :, n:] = ref[b, :, n:].float()
    assert float((out.double() - ref).abs().max()) <= tolerance(out, naive, ref, 2e-6)


def test_varlen_equals_per_sequence():
    q, k, _ = rand_qkv(8, 3, 4, 2, 100, 150, 16)
    ql, kl = [100, 40, 77], [150, 40, 120]
    attn = sparsekit.build("flexprefill", budget={"min_budget": 0}, kernel="torch", block_q=32, block_k=32)
    plan = attn.plan(q, k, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl))
    assert tuple(plan.scores.info["js"].shape) == (3, 4)
    for b in range(3):
        one = attn.plan(q[b : b + 1, :, : ql[b]], k[b : b + 1, :, : kl[b]])
        nq, nk = one.scores.scores.shape[2:]
        assert torch.equal(plan.scores.scores[b : b + 1, :, :nq, :nk], one.scores.scores)
        assert torch.equal(plan.scores.info["vertical_slash"][b : b + 1], one.scores.info["vertical_slash"])
        assert torch.equal(plan.layout.kv_counts[b : b + 1, :, :nq], one.layout.kv_counts)


def test_min_budget_bounds_every_row():
    q, k, _ = vertical_and_local_heads(256)
    attn = sparsekit.build("flexprefill", budget={"gamma": 0.3, "min_budget": 96}, kernel="torch", block_q=32, block_k=32)
    counts = attn.plan(q, k).layout.kv_counts[0]
    assert bool((counts >= torch.clamp(torch.arange(1, 9), max=3)).all())


def test_preset_defaults():
    attn = sparsekit.build("flexprefill")
    assert attn.name == ("flexprefill(tau=0.1,pattern='auto')+cumulative(gamma=0.9,min_budget=1024,max_budget=0)"
                         "+cumulative(sink=True,diagonal=True)+auto")
    assert "flexprefill" in sparsekit.get_registry().presets


@pytest.mark.parametrize("opts,bad", [({"tau": -0.1}, "tau"), ({"tau": 1.5}, "tau"), ({"tau": "0.1"}, "tau"),
                                      ({"pattern": "slash"}, "pattern"), ({"step_mb": 0}, "step_mb")])
def test_bad_options(opts, bad):
    with pytest.raises(ConfigError, match=rf"{bad}=.*allowed: .*Fix: "):
        FlexPrefillEstimator(**opts)
    with pytest.raises(ConfigError, match=bad):
        sparsekit.build("flexprefill", estimator=opts)
