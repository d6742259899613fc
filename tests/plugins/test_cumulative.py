"""The shared ``cumulative`` budget and mask (per-row top-p over normalized block score mass), each checked
against a brute-force computation of its definition written here with Python loops in float64 (no library
helpers such as ``block_geometry`` or ``forced_blocks``)."""

from __future__ import annotations

import math

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, BlockScores, Budget, CompositionError, ConfigError, Estimator
from sparsekit.plugins.common.cumulative import CumulativeBudget, CumulativeMask

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance


# ------------------------------------------------------------------------------------------------
# brute force


def bf_geometry(Nq, Nk, bq, bk, causal, ql=None, kl=None):
    """Per q-block: (visible kv-blocks, set of diagonal kv-blocks); row r sits at position kl - ql + r."""
    ql = Nq if ql is None else ql
    kl = Nk if kl is None else kl
    out = []
    for i in range(math.ceil(Nq / bq)):
        rows = list(range(i * bq, min((i + 1) * bq, ql)))
        if not rows:
            out.append((0, set()))
            continue
        pos = [kl - ql + r for r in rows]
        vis = (max(pos) // bk + 1) if causal else math.ceil(kl / bk)
        out.append((vis, {p // bk for p in pos if 0 <= p < kl}))
    return out


def bf_row(scores_row, vis, forced, frac, lo=0, hi=None):
    """Kept blocks (ascending) of one row: forced first, then by descending mass (ties -> lower index), until the
    mass of the blocks taken reaches ``frac``; then bounded by [lo, hi], by vis and by the forced blocks."""
    mass = []
    for j in range(vis):
        x = float(scores_row[j])
        mass.append(x if math.isfinite(x) and x > 0 else 0.0)
    total = sum(mass)
    order = sorted(forced) + sorted((j for j in range(vis) if j not in forced), key=lambda j: (-mass[j], j))
    if frac >= 1 or total <= 0:
        count = vis
    else:
        count, acc = 0, 0.0
        for j in order:
            if acc >= frac:
                break
            count += 1
            acc += mass[j] / total
    count = max(count, lo)
    if hi is not None:
        count = min(count, hi)
    count = max(min(count, vis), len(forced))
    return sorted(order[:count])


def bf_cumulative(scores, frac, Nq, Nk, bq, bk, causal, sink=True, diagonal=True, lo=0, hi=None, q_lens=None,
                  k_lens=None):
    B, G, nQb, _ = scores.shape
    Hq = frac.shape[1]
    out = []
    for b in range(B):
        geo = bf_geometry(Nq, Nk, bq, bk, causal, q_lens[b] if q_lens else None, k_lens[b] if k_lens else None)
        heads = []
        for h in range(Hq):
            g = h // (Hq // G)
            rows = []
            for i in range(nQb):
                vis, diag = geo[i]
                forced = ({0} if sink and vis > 0 else set()) | ({j for j in diag if j < vis} if diagonal else set())
                rows.append(bf_row(scores[b, g, i].tolist(), vis, forced, float(frac[b, h, i]), lo, hi))
            heads.append(rows)
        out.append(heads)
    return out


def near_threshold(scores_row, vis, forced, frac, margin=1e-4):
    """True when some cumulative mass of the brute-force order lies within ``margin`` of ``frac`` (float32 and
    float64 could then disagree)."""
    mass = [max(float(x), 0.0) if math.isfinite(float(x)) else 0.0 for x in scores_row[:vis]]
    total = sum(mass)
    if total <= 0:
        return False
    order = sorted(forced) + sorted((j for j in range(vis) if j not in forced), key=lambda j: (-mass[j], j))
    acc = 0.0
    for j in order:
        acc += mass[j] / total
        if abs(acc - frac) < margin:
            return True
    return False


def safe_fractions(scores, Hq, Nq, Nk, bq, bk, causal, sink, diagonal, gen, q_lens=None, k_lens=None):
    """Random fractions in (0.05, 0.99] per (b, h, q-block), redrawn where a cumulative mass is too close."""
    B, G, nQb, _ = scores.shape
    frac = torch.empty(B, Hq, nQb)
    for b in range(B):
        geo = bf_geometry(Nq, Nk, bq, bk, causal, q_lens[b] if q_lens else None, k_lens[b] if k_lens else None)
        for h in range(Hq):
            for i in range(nQb):
                vis, diag = geo[i]
                forced = ({0} if sink and vis > 0 else set()) | ({j for j in diag if j < vis} if diagonal else set())
                while True:
                    f = float(torch.rand((), generator=gen)) * 0.94 + 0.05
                    if not near_threshold(scores[b, h // (Hq // G), i].tolist(), vis, forced, f):
                        break
                frac[b, h, i] = f
    return frac


def layout_rows(layout):
    c, idx = layout.kv_counts, layout.kv_indices
    return [[[idx[b, h, i, : int(c[b, h, i])].tolist() for i in range(c.shape[2])] for h in range(c.shape[1])]
            for b in range(c.shape[0])]


def check_format(layout):
    assert layout.kv_counts.dtype == torch.int32 and layout.kv_indices.dtype == torch.int32
    assert layout.max_k == (int(layout.kv_counts.max()) if layout.kv_counts.numel() else 0)
    pad = torch.arange(layout.max_k) >= layout.kv_counts[..., None].long()
    assert bool((layout.kv_indices[pad] == 0).all())
    layout.validate()


def rand_problem(seed, B, Hq, Nq, Nk, bq, bk, causal=True, **kw):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, 16, generator=gen)
    k = torch.randn(B, 1, Nk, 16, generator=gen)
    return AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal, **kw)


def make_scores(kind, B, G, nQb, nKb, gen):
    if kind == "random":
        s = torch.rand(B, G, nQb, nKb, generator=gen) ** 3  # skewed, like attention mass
    else:  # ties
        s = torch.randint(0, 4, (B, G, nQb, nKb), generator=gen).float()
    if kind == "dirty":  # NaN, +-inf and negative scores count as zero mass
        r = torch.rand(B, G, nQb, nKb, generator=gen)
        s = torch.where(r < 0.1, float("nan"), s)
        s = torch.where((r > 0.1) & (r < 0.2), float("-inf"), s)
        s = torch.where((r > 0.2) & (r < 0.25), float("inf"), s)
        s = torch.where((r > 0.25) & (r < 0.35), -s, s)
    return s


# ------------------------------------------------------------------------------------------------
# mask against brute force

CASES = [
    # (B, Hq, G, Nq, Nk, bq, bk, causal, kind)
    pytest.param(2, 4, 1, 200, 200, 32, 32, True, "random", id="G1-random-ragged"),
    pytest.param(1, 8, 4, 130, 300, 16, 32, True, "ties", id="G4-ties-chunked-offset-diagonals"),
    pytest.param(1, 7, 7, 100, 100, 32, 16, True, "dirty", id="G=Hq-gqa7-dirty"),
    pytest.param(2, 4, 2, 77, 251, 32, 16, True, "random", id="bq>bk-chunked"),
    pytest.param(1, 4, 2, 90, 200, 32, 32, False, "ties", id="noncausal"),
    pytest.param(1, 2, 1, 200, 90, 32, 16, False, "dirty", id="noncausal-Nq>Nk"),
    pytest.param(1, 28, 4, 40, 56, 16, 16, True, "random", id="gqa7-G4-tiny"),
]


@pytest.mark.parametrize("sink,diagonal", [(True, True), (False, False)])
@pytest.mark.parametrize("B,Hq,G,Nq,Nk,bq,bk,causal,kind", CASES)
def test_cumulative_mask_matches_definition(B, Hq, G, Nq, Nk, bq, bk, causal, kind, sink, diagonal):
    gen = torch.Generator().manual_seed(Nq * 31 + Nk + Hq + G + sink)
    prob = rand_problem(1, B, Hq, Nq, Nk, bq, bk, causal)
    scores = make_scores(kind, B, G, prob.nQb, prob.nKb, gen)  # garbage also in invisible blocks: never counted
    frac = safe_fractions(scores, Hq, Nq, Nk, bq, bk, causal, sink, diagonal, gen)
    layout = CumulativeMask(sink=sink, diagonal=diagonal).build(prob, BlockScores(scores, "mass"), Budget("mass", frac))
    assert layout_rows(layout) == bf_cumulative(scores, frac, Nq, Nk, bq, bk, causal, sink, diagonal)
    check_format(layout)


@pytest.mark.parametrize("lo,hi", [(3, None), (0, 2), (2, 4), (50, None)])
def test_cumulative_mask_min_max_blocks(lo, hi):
    B, Hq, G, Nq, Nk, bq, bk = 1, 4, 2, 250, 250, 16, 16
    gen = torch.Generator().manual_seed(lo * 7 + (hi or 0))
    prob = rand_problem(2, B, Hq, Nq, Nk, bq, bk)
    scores = make_scores("random", B, G, prob.nQb, prob.nKb, gen)
    frac = safe_fractions(scores, Hq, Nq, Nk, bq, bk, True, True, True, gen)
    budget = Budget("mass", frac, {"min_blocks": lo, "max_blocks": hi})
    layout = CumulativeMask().build(prob, BlockScores(scores, "mass"), budget)
    assert layout_rows(layout) == bf_cumulative(scores, frac, Nq, Nk, bq, bk, True, lo=lo, hi=hi)
    check_format(layout)


def test_cumulative_mask_varlen():
    """Handles per-sequence lengths itself (supports_varlen): blocks past a sequence are never kept."""
    B, Hq, G, Nq, Nk, bq, bk = 3, 4, 2, 150, 250, 32, 32
    ql, kl = [150, 61, 20], [250, 100, 170]
    gen = torch.Generator().manual_seed(8)
    prob = rand_problem(3, B, Hq, Nq, Nk, bq, bk, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl))
    scores = make_scores("ties", B, G, prob.nQb, prob.nKb, gen)
    frac = safe_fractions(scores, Hq, Nq, Nk, bq, bk, True, True, True, gen, ql, kl)
    layout = CumulativeMask().build(prob, BlockScores(scores, "mass"), Budget("mass", frac))
    assert layout_rows(layout) == bf_cumulative(scores, frac, Nq, Nk, bq, bk, True, q_lens=ql, k_lens=kl)
    check_format(layout)


def test_cumulative_mask_hand_made():
    """Nq=Nk=128, blocks 32; q-block 3 sees 4 blocks with masses 0.1/0.5/0.3/0.1 (sink 0, diagonal 3 forced)."""
    prob = rand_problem(4, 1, 1, 128, 128, 32, 32)
    s = torch.full((1, 1, 4, 4), float("-inf"))
    s[0, 0, 3] = torch.tensor([0.1, 0.5, 0.3, 0.1])
    s[0, 0, 2, :3] = torch.tensor([0.2, 0.4, 0.4])
    s[0, 0, 1, :2] = torch.tensor([0.0, 0.0])  # no mass: keep every visible block
    s[0, 0, 0, :1] = torch.tensor([1.0])

    def rows(frac, **kw):
        budget = Budget("mass", torch.full((1, 1, 4), frac))
        return layout_rows(CumulativeMask(**kw).build(prob, BlockScores(s, "mass"), budget))[0][0]

    # forced blocks 0 and 3 hold 0.2 of q-block 3; block 1 (0.5) brings 0.7, block 2 (0.3) brings 1.0
    assert rows(0.15) == [[0], [0, 1], [0, 2], [0, 3]]
    assert rows(0.65) == [[0], [0, 1], [0, 1, 2], [0, 1, 3]]
    assert rows(0.75) == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    # without forced blocks: pure top-p, ties (0.4, 0.4) to the lower index
    assert rows(0.45, sink=False, diagonal=False) == [[0], [0, 1], [1, 2], [1]]
    assert rows(0.35, sink=False, diagonal=False) == [[0], [0, 1], [1], [1]]
    assert rows(0.55, sink=False, diagonal=False) == [[0], [0, 1], [1, 2], [1, 2]]
    assert rows(0.81, sink=False, diagonal=False) == [[0], [0, 1], [0, 1, 2], [0, 1, 2]]
    assert rows(1.0, sink=False, diagonal=False) == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]


def test_cumulative_mask_keeps_descending_until_threshold():
    """The kept non-forced blocks are the top-scoring ones, their mass reaches the fraction, and dropping the
    weakest of them falls below it (minimality)."""
    gen = torch.Generator().manual_seed(5)
    prob = rand_problem(5, 1, 2, 256, 256, 16, 16)
    scores = make_scores("random", 1, 2, prob.nQb, prob.nKb, gen)
    scores = scores.masked_fill(~prob.visible_mask()[:, None], float("-inf"))
    frac = 0.8
    layout = CumulativeMask().build(prob, BlockScores(scores, "mass"), Budget("mass", torch.full((1, 2, 16), frac)))
    for h in range(2):
        for i, kept in enumerate(layout_rows(layout)[0][h]):
            row = scores[0, h, i, : i + 1].double()
            norm = row / row.sum()
            forced = {0, i}
            free = [j for j in kept if j not in forced]
            dropped = [j for j in range(i + 1) if j not in kept]
            assert float(norm[kept].sum()) >= frac
            if free:
                assert float(norm[kept].sum() - norm[free].min()) < frac
                if dropped:
                    assert float(norm[free].min()) >= float(norm[dropped].max())


def test_cumulative_budget_values():
    prob = rand_problem(6, 2, 3, 100, 200, 32, 16)
    bud = CumulativeBudget(gamma=0.7, min_budget=40, max_budget=100).allocate(prob, None)
    assert bud.kind == "mass" and bud.value.dtype == torch.float32 and tuple(bud.value.shape) == (2, 3, 4)
    assert bool((bud.value == 0.7).all())
    assert bud.info["min_blocks"] == 3 and bud.info["max_blocks"] == 7  # ceil(40/16), ceil(100/16)
    assert CumulativeBudget().allocate(prob, None).info["max_blocks"] is None


def test_cumulative_budget_bounds_through_build():
    """min_budget/max_budget reach the mask: with gamma tiny every row keeps at least min_budget tokens of blocks,
    with gamma=1 at most max_budget (but never fewer than the forced blocks)."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 2, 256, 16, generator=gen)
    k = torch.randn(1, 2, 256, 16, generator=gen)
    vis = torch.arange(1, 17)
    for opts, want in [({"gamma": 0.01, "min_budget": 64}, torch.clamp(vis, max=4)),
                       ({"gamma": 1.0, "max_budget": 48}, torch.clamp(vis, max=3).maximum(torch.clamp(vis, max=2)))]:
        attn = sparsekit.build(estimator="proxy", budget={"name": "cumulative", **opts}, mask="cumulative",
                               kernel="torch", block_q=16, block_k=16)
        counts = attn.plan(q, k).layout.kv_counts[0]
        if "min_budget" in opts:
            assert bool((counts >= want).all())
        else:
            assert torch.equal(counts, want.expand(2, -1).int())


# ------------------------------------------------------------------------------------------------
# full budget, options, composition


@pytest.mark.parametrize("causal,Nq,Nk", [(True, 150, 150), (True, 70, 230), (False, 90, 130)])
def test_full_budget_equals_dense(causal, Nq, Nk):
    gen = torch.Generator().manual_seed(Nq + Nk)
    q = torch.randn(2, 8, Nq, 32, generator=gen) * 1.5
    k = torch.randn(2, 2, Nk, 32, generator=gen)
    v = torch.randn(2, 2, Nk, 32, generator=gen)
    attn = sparsekit.build(estimator="proxy", budget="cumulative(gamma=1.0)", mask="cumulative", kernel="torch",
                           block_q=32, block_k=32)
    out, plan = attn(q, k, v, causal=causal, return_plan=True)
    assert plan.density == 1.0
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double(), causal=causal)
    naive = sparsekit.dense_attention(q, k, v, causal=causal)
    assert float((out.double() - ref).abs().max()) <= tolerance(out, naive, ref, 2e-6)


@pytest.mark.parametrize("opts,bad", [({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"gamma": True}, "gamma"),
                                      ({"min_budget": -1}, "min_budget"), ({"max_budget": 1.5}, "max_budget"),
                                      ({"min_budget": 512, "max_budget": 256}, "max_budget")])
def test_budget_bad_options(opts, bad):
    with pytest.raises(ConfigError, match=rf"{bad}=.*allowed: .*Fix: "):
        CumulativeBudget(**opts)
    with pytest.raises(ConfigError, match=bad):
        sparsekit.build(estimator="proxy", budget={"name": "cumulative", **opts}, mask="cumulative")


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'tau'.*gamma"):
        sparsekit.build(estimator="proxy", budget="cumulative(tau=0.9)", mask="cumulative")


class _RankEstimator(Estimator):
    name = "rank_only"
    produces = "rank"


@pytest.mark.parametrize("kw,names", [
    ({"estimator": "proxy", "budget": "fixed", "mask": "cumulative"}, ("'fixed'", "'count'", "'cumulative'")),
    ({"estimator": "proxy", "budget": "dynamic", "mask": "cumulative"}, ("'dynamic'", "'cumulative'")),
    ({"estimator": "proxy", "budget": "cumulative", "mask": "topk"}, ("'cumulative'", "'mass'", "'topk'")),
    ({"estimator": _RankEstimator(), "budget": "cumulative", "mask": "cumulative"}, ("'rank_only'", "'rank'", "'cumulative'")),
    ({"estimator": None, "budget": "cumulative", "mask": "cumulative"}, ("'cumulative'", "estimator")),
    ({"estimator": "proxy", "budget": None, "mask": "cumulative"}, ("'cumulative'", "budget")),
])
def test_build_refuses_invalid_compositions(kw, names):
    with pytest.raises(CompositionError) as exc:
        sparsekit.build(kernel="torch", **kw)
    for n in names:
        assert n in str(exc.value)


def test_label_and_config_round_trip(tmp_path):
    attn = sparsekit.build(estimator="proxy", budget="cumulative(gamma=0.8,min_budget=64,max_budget=512)",
                           mask="cumulative(sink=False)", kernel="torch")
    assert "cumulative(gamma=0.8,min_budget=64,max_budget=512)" in attn.name
    again = sparsekit.build(config=attn.save(tmp_path / "c.toml"))
    assert again.name == attn.name
