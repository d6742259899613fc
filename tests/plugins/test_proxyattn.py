"""ProxyAttn stages (``proxy`` estimator, ``dynamic`` budget) and the shared ``topk`` / ``fixed`` / ``dense``
stages, each checked against a brute-force computation of its definition (DESIGN.md sections 2, 3, 5).

The brute-force references below are written from the definitions alone, with explicit Python loops
over batch, heads, q-blocks, rows and kv-blocks, in float64. They never call the library's helpers
(``block_geometry``, ``sampled_rows``, ``last_block_mass``, ``forced_blocks``...).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, BlockScores, Budget, InputError
from sparsekit.plugins.common.budgets import FixedBudget
from sparsekit.plugins.common.masks import TopKMask
from sparsekit.plugins.dense import DenseMask
from sparsekit.plugins.proxyattn.budget import DynamicBudget
from sparsekit.plugins.proxyattn.estimator import ProxyEstimator

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------------
# brute-force references


def bf_geometry(Nq: int, Nk: int, bq: int, bk: int, causal: bool, ql: int | None = None,
                kl: int | None = None) -> list[tuple[int, set[int]]]:
    """Per q-block of one sequence: (number of visible kv-blocks, set of diagonal kv-blocks).

    Row ``r`` sits at absolute position ``kl - ql + r`` (bottom-right alignment). The diagonal blocks are
    the kv-blocks holding the positions of the q-block's valid rows; a causal q-block sees the prefix of
    kv-blocks up to the one holding its last row's position; a non-causal one sees every key block.
    """
    ql = Nq if ql is None else ql
    kl = Nk if kl is None else kl
    out = []
    for i in range(math.ceil(Nq / bq)):
        rows = list(range(i * bq, min((i + 1) * bq, ql)))
        if not rows:
            out.append((0, set()))
            continue
        pos = [kl - ql + r for r in rows]
        diag = {p // bk for p in pos if 0 <= p < kl}
        vis = (max(pos) // bk + 1) if causal else math.ceil(kl / bk)
        out.append((vis, diag))
    return out


def bf_proxy(q: torch.Tensor, k: torch.Tensor, G: int, stride: int, bq: int, bk: int, causal: bool) -> torch.Tensor:
    """float64 [B, G, nQb, nKb] proxy scores from the definition."""
    q, k = q.double(), k.double()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    scale = 1.0 / math.sqrt(D)
    hq, hk = Hq // G, Hkv // G
    out = torch.full((B, G, nQb, nKb), NEG_INF, dtype=torch.float64)
    for b in range(B):
        for g in range(G):
            qp = sum(q[b, h] for h in range(g * hq, (g + 1) * hq)) / hq  # [Nq, D]
            kp = sum(k[b, h] for h in range(g * hk, (g + 1) * hk)) / hk  # [Nk, D]
            for i in range(nQb):
                start, last = i * bq, min((i + 1) * bq, Nq) - 1
                for r in range(last, start - 1, -stride):  # every stride-th row back from the last one
                    n_seen = (Nk - Nq + r + 1) if causal else Nk
                    p = torch.softmax((kp[:n_seen] @ qp[r]) * scale, dim=0)
                    for j in range(math.ceil(n_seen / bk)):
                        blk = float(p[j * bk : (j + 1) * bk].max())
                        out[b, g, i, j] = max(float(out[b, g, i, j]), blk)
    return out


def bf_last_mass(q: torch.Tensor, k: torch.Tensor, bq: int, bk: int, causal: bool) -> torch.Tensor:
    """float64 [B, Hq, nKb]: exact softmax of the last min(bq, Nq) rows per real head, row-averaged, summed per block."""
    q, k = q.double(), k.double()
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    nKb = math.ceil(Nk / bk)
    grp = Hq // Hkv
    m = min(bq, Nq)
    out = torch.zeros(B, Hq, nKb, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kh = k[b, h // grp]
            acc = torch.zeros(Nk, dtype=torch.float64)
            for r in range(Nq - m, Nq):
                n_seen = (Nk - Nq + r + 1) if causal else Nk
                p = torch.softmax((kh[:n_seen] @ q[b, h, r]) / math.sqrt(D), dim=0)
                acc[:n_seen] += p
            acc /= m
            for j in range(nKb):
                out[b, h, j] = acc[j * bk : (j + 1) * bk].sum()
    return out


def bf_count_for_gamma(mass_row: list[float], gamma: float) -> int:
    """Smallest count whose sorted (descending) cumulative mass reaches gamma (all blocks if none does)."""
    total = 0.0
    for c, x in enumerate(sorted(mass_row, reverse=True), start=1):
        total += x
        if total >= gamma:
            return c
    return len(mass_row)


def bf_dynamic(q: torch.Tensor, k: torch.Tensor, bq: int, bk: int, causal: bool, gamma: float,
               min_budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 [B, Hq, nQb] counts, int64 [B, Hq] count of the last q-block)."""
    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    geo = bf_geometry(Nq, Nk, bq, bk, causal)
    vis = [v for v, _ in geo]
    n_last = vis[-1]
    mass = bf_last_mass(q, k, bq, bk, causal) if gamma < 1 else None
    min_blocks = -(-min_budget // bk)
    counts = torch.zeros(B, Hq, len(vis), dtype=torch.int64)
    last = torch.zeros(B, Hq, dtype=torch.int64)
    for b in range(B):
        for h in range(Hq):
            c = n_last if mass is None else min(bf_count_for_gamma(mass[b, h].tolist(), gamma), n_last)
            last[b, h] = c
            for i, v in enumerate(vis):
                keep = -(-c * v // n_last)  # ceil(c / n_last * v), exactly
                counts[b, h, i] = min(max(keep, min_blocks), v)
    return counts, last


def bf_topk(scores: torch.Tensor, budget: torch.Tensor, Nq: int, Nk: int, bq: int, bk: int, causal: bool,
            sink: bool = True, diagonal: bool = True, q_lens: list[int] | None = None,
            k_lens: list[int] | None = None) -> list[list[list[list[int]]]]:
    """Kept kv-blocks (ascending lists) per [b][h][i]."""
    B, G, nQb, _ = scores.shape
    Hq = budget.shape[1]
    out = []
    for b in range(B):
        geo = bf_geometry(Nq, Nk, bq, bk, causal, q_lens[b] if q_lens else None, k_lens[b] if k_lens else None)
        per_head = []
        for h in range(Hq):
            g = h // (Hq // G)
            rows = []
            for i in range(nQb):
                vis, diag = geo[i]
                forced = set()
                if vis > 0 and sink:
                    forced.add(0)
                if diagonal:
                    forced |= {j for j in diag if j < vis}
                count = max(min(int(budget[b, h, i]), vis), len(forced))

                def rank(j: int) -> tuple:
                    s = float(scores[b, g, i, j])
                    return (0, 0.0, -j) if math.isnan(s) else (1, s, -j)  # NaN lowest; ties -> lower index

                others = sorted((j for j in range(vis) if j not in forced), key=rank, reverse=True)
                rows.append(sorted(forced | set(others[: count - len(forced)])))
            per_head.append(rows)
        out.append(per_head)
    return out


def layout_rows(layout: sparsekit.BlockLayout) -> list[list[list[list[int]]]]:
    c, idx = layout.kv_counts, layout.kv_indices
    return [[[idx[b, h, i, : int(c[b, h, i])].tolist() for i in range(c.shape[2])] for h in range(c.shape[1])]
            for b in range(c.shape[0])]


def check_layout_format(layout: sparsekit.BlockLayout) -> None:
    """int32, kv_indices last dim == largest count, padding entries 0, validates."""
    assert layout.kv_counts.dtype == torch.int32 and layout.kv_indices.dtype == torch.int32
    max_count = int(layout.kv_counts.max()) if layout.kv_counts.numel() else 0
    assert layout.max_k == max_count
    slot = torch.arange(layout.max_k)
    pad = slot >= layout.kv_counts[..., None].long()
    assert bool((layout.kv_indices[pad] == 0).all()), "padding entries must be 0"
    layout.validate()


def rand_qk(seed: int, B: int, Hq: int, Hkv: int, Nq: int, Nk: int, D: int, q_mult: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=torch.float64) * q_mult
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    return q, k


def problem(q, k, bq, bk, causal=True, **kw) -> AttentionProblem:
    return AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal, **kw)


# ------------------------------------------------------------------------------------------------
# proxy estimator

PROXY_CASES = [
    # (B, Hq, Hkv, G, Nq, Nk, bq, bk, D, stride, causal, step_mb)
    pytest.param(1, 4, 4, 1, 128, 128, 32, 32, 16, 4, True, 256, id="G1-mha-aligned-s4"),
    pytest.param(2, 8, 4, 4, 150, 150, 32, 16, 32, 3, True, 256, id="G=Hkv-gqa2-ragged-s3"),
    pytest.param(1, 8, 4, 2, 100, 260, 16, 32, 16, 1, True, 256, id="G2-chunked-s1"),
    pytest.param(1, 7, 1, 1, 77, 93, 16, 16, 16, 4, True, 256, id="gqa7-ragged-chunked"),
    pytest.param(1, 28, 4, 4, 40, 56, 16, 16, 16, 3, True, 256, id="gqa7-G4-tiny"),
    pytest.param(1, 28, 4, 2, 45, 45, 16, 32, 32, 4, True, 256, id="gqa7-G2"),
    pytest.param(2, 4, 1, 1, 90, 200, 32, 32, 32, 4, False, 256, id="noncausal-chunked"),
    pytest.param(1, 4, 2, 2, 200, 120, 32, 32, 16, 3, False, 256, id="noncausal-Nq>Nk"),
    pytest.param(1, 2, 2, 1, 300, 300, 32, 32, 32, 1, True, 256, id="stride1-300"),
    pytest.param(1, 2, 1, 1, 70, 70, 32, 16, 16, 40, True, 256, id="stride>block"),
    pytest.param(1, 8, 4, 4, 300, 300, 32, 32, 32, 1, True, 1, id="chunked-steps"),
    pytest.param(1, 4, 4, 4, 41, 290, 16, 32, 16, 4, True, 256, id="G4-mha-Nq<<Nk"),
]


@pytest.mark.parametrize("B,Hq,Hkv,G,Nq,Nk,bq,bk,D,stride,causal,step_mb", PROXY_CASES)
def test_proxy_matches_definition(B, Hq, Hkv, G, Nq, Nk, bq, bk, D, stride, causal, step_mb):
    q, k = rand_qk(1000 + Nq + 7 * Nk + Hq, B, Hq, Hkv, Nq, Nk, D, q_mult=2.0)
    prob = problem(q, k, bq, bk, causal)
    scores = ProxyEstimator(g=G, stride=stride, step_mb=step_mb).estimate(prob)
    ref = bf_proxy(q, k, G, stride, bq, bk, causal)
    assert scores.kind == "mass"
    assert scores.scores.dtype == torch.float32
    assert tuple(scores.scores.shape) == (B, G, math.ceil(Nq / bq), math.ceil(Nk / bk))
    got = scores.scores.double()
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref)), "-inf (invisible blocks) pattern differs"
    assert not bool(torch.isnan(got).any())
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], rtol=1e-5, atol=1e-6)


def test_proxy_invisible_blocks_are_exactly_causal_geometry():
    B, Hq, Hkv, Nq, Nk, bq, bk = 1, 2, 2, 70, 150, 16, 32
    q, k = rand_qk(3, B, Hq, Hkv, Nq, Nk, 16)
    scores = ProxyEstimator(g=2, stride=4).estimate(problem(q, k, bq, bk)).scores
    for i, (vis, _) in enumerate(bf_geometry(Nq, Nk, bq, bk, True)):
        assert bool(torch.isfinite(scores[:, :, i, :vis]).all())
        assert bool(torch.isneginf(scores[:, :, i, vis:]).all())


def test_proxy_half_precision_inputs():
    """bf16 inputs: scores stay float32 and equal the definition applied to the (rounded) bf16 values."""
    q, k = rand_qk(11, 1, 4, 2, 96, 130, 32)
    q, k = q.to(torch.bfloat16), k.to(torch.bfloat16)
    scores = ProxyEstimator(g=2, stride=3).estimate(problem(q, k, 32, 32)).scores
    ref = bf_proxy(q, k, 2, 3, 32, 32, True)
    assert scores.dtype == torch.float32
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(scores))
    torch.testing.assert_close(scores.double()[fin], ref[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("G,Hkv", [(3, 4), (2, 1), (4, 10), (8, 4)])
def test_proxy_g_not_dividing_hkv_raises(G, Hkv):
    q, k = rand_qk(5, 1, Hkv * 2, Hkv, 40, 40, 16)
    with pytest.raises(InputError, match=rf"g={G}\b"):
        ProxyEstimator(g=G).estimate(problem(q, k, 16, 16))


def test_proxy_g_not_dividing_hkv_raises_through_build():
    q, k = rand_qk(6, 1, 8, 4, 64, 64, 16)
    attn = sparsekit.build(estimator="proxy(g=3)", budget="fixed(ratio=0.5)", kernel="torch", block_q=32, block_k=32)
    with pytest.raises(InputError, match=r"g=3\b"):
        attn.plan(q, k)


# ------------------------------------------------------------------------------------------------
# dynamic budget


def pick_gamma(mass: torch.Tensor, lo: float = 0.80, hi: float = 0.97, margin: float = 2e-4) -> float:
    """A gamma in [lo, hi] at least ``margin`` away from every cumulative mass of every head (no ties)."""
    csums = [c for row in mass.reshape(-1, mass.shape[-1]).tolist()
             for c in torch.tensor(sorted(row, reverse=True), dtype=torch.float64).cumsum(0).tolist()]
    for t in range(int((hi - lo) / 1e-3) + 1):
        gamma = round(lo + t * 1e-3, 6)
        if all(abs(c - gamma) > margin for c in csums):
            return gamma
    raise AssertionError("no gamma without near-ties: change the seed")


DYNAMIC_CASES = [
    # (B, Hq, Hkv, Nq, Nk, bq, bk, D, causal, min_budget)
    pytest.param(1, 4, 4, 256, 256, 32, 32, 16, True, 0, id="mha-aligned"),
    pytest.param(2, 16, 4, 128, 300, 32, 32, 16, True, 0, id="gqa4-kv-head-chunks"),  # step_mb=1: one KV head per step
    pytest.param(2, 8, 2, 200, 200, 32, 16, 32, True, 0, id="gqa4-ragged"),
    pytest.param(1, 7, 1, 150, 290, 32, 32, 16, True, 0, id="gqa7-chunked"),
    pytest.param(1, 28, 4, 48, 70, 16, 16, 16, True, 0, id="gqa7-tiny"),
    pytest.param(1, 4, 2, 70, 260, 32, 32, 32, True, 40, id="partial-last-block-min40"),
    pytest.param(1, 2, 1, 20, 200, 32, 16, 16, True, 100, id="Nq<block_q-min100"),
    pytest.param(2, 4, 1, 90, 200, 32, 32, 32, False, 0, id="noncausal"),
    pytest.param(1, 4, 4, 300, 300, 16, 32, 16, True, 96, id="bq16-bk32-min96"),
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,bq,bk,D,causal,min_budget", DYNAMIC_CASES)
def test_dynamic_matches_definition(B, Hq, Hkv, Nq, Nk, bq, bk, D, causal, min_budget):
    q, k = rand_qk(2000 + Nq + Nk + Hq, B, Hq, Hkv, Nq, Nk, D)
    q = q * torch.linspace(0.3, 4.0, Hq, dtype=torch.float64)[None, :, None, None]  # varied head sharpness
    gen = torch.Generator().manual_seed(Nk)
    key_gain = torch.rand(math.ceil(Nk / bk), generator=gen, dtype=torch.float64) * 2.5 + 0.2
    k = k * key_gain.repeat_interleave(bk)[:Nk][None, None, :, None]  # some kv-blocks matter more
    gamma = pick_gamma(bf_last_mass(q, k, bq, bk, causal))
    want, want_last = bf_dynamic(q, k, bq, bk, causal, gamma, min_budget)
    step_mb = 1 if Hq == 16 else 256
    bud = DynamicBudget(gamma=gamma, min_budget=min_budget, step_mb=step_mb).allocate(problem(q, k, bq, bk, causal), None)
    assert bud.kind == "count" and bud.value.dtype == torch.int32
    assert torch.equal(bud.value.long(), want), f"gamma={gamma}"
    assert torch.equal(bud.info["count_last"].long(), want_last)
    n_last = bf_geometry(Nq, Nk, bq, bk, causal)[-1][0]
    torch.testing.assert_close(bud.info["ratio"].double(), want_last.double() / n_last)
    # the budgets are not all-dense or all-minimal: the test distinguishes heads
    assert len(set(want_last.flatten().tolist())) > 1


@pytest.mark.parametrize("causal", [True, False])
def test_dynamic_gamma_one_keeps_all_visible(causal):
    Nq, Nk, bq, bk = 130, 250, 32, 32
    q, k = rand_qk(21, 2, 8, 2, Nq, Nk, 16)
    bud = DynamicBudget(gamma=1.0, min_budget=0).allocate(problem(q, k, bq, bk, causal), None)
    vis = torch.tensor([v for v, _ in bf_geometry(Nq, Nk, bq, bk, causal)])
    assert torch.equal(bud.value.long(), vis.expand(2, 8, -1))
    assert torch.equal(bud.info["ratio"], torch.ones(2, 8))


def concentrated_qk(Nq: int, Nk: int, D: int, hot: dict[int, list[int]], bk: int, Hq: int):
    """q [1, Hq, Nq, D] / k [1, 1, Nk, D] where every row of head h puts (almost) all its mass, evenly, on the
    kv-blocks hot[h]: head h reads coordinate 1 + h, which is 1 only for the keys of its hot blocks."""
    gen = torch.Generator().manual_seed(77)
    k = torch.randn(1, 1, Nk, D, generator=gen, dtype=torch.float64) * 0.05
    q = torch.randn(1, Hq, Nq, D, generator=gen, dtype=torch.float64) * 0.05
    for h, blocks in hot.items():
        q[:, h, :, 1 + h] = 60.0  # hot keys score 60 / sqrt(D) higher than the others
        for j in blocks:
            k[:, :, j * bk : (j + 1) * bk, 1 + h] = 1.0
    return q, k


@pytest.mark.parametrize("gamma,expect", [(0.3, {0: 1, 1: 1, 2: 1}), (0.6, {0: 2, 1: 1, 2: 2}),
                                          (0.95, {0: 3, 1: 1, 2: 2})])
def test_dynamic_hand_made_concentration(gamma, expect):
    """Head 0: mass split evenly over blocks {1, 3, 5}; head 1: all on block 2; head 2: split over {0, 6}."""
    Nq = Nk = 256
    bq = bk = 32
    hot = {0: [1, 3, 5], 1: [2], 2: [0, 6]}
    q, k = concentrated_qk(Nq, Nk, 16, hot, bk, Hq=3)
    mass = bf_last_mass(q, k, bq, bk, True)[0]
    for h, blocks in hot.items():  # the construction does what it says
        assert float(mass[h, blocks].sum()) > 0.999
        for j in blocks:
            assert abs(float(mass[h, j]) - 1 / len(blocks)) < 0.02
    bud = DynamicBudget(gamma=gamma, min_budget=0).allocate(problem(q, k, bq, bk), None)
    nKb = 8
    for h in range(3):
        c = expect[h]
        assert int(bud.info["count_last"][0, h]) == c
        assert float(bud.info["ratio"][0, h]) == pytest.approx(c / nKb)
        want = [-(-c * (i + 1) // nKb) for i in range(8)]  # visible_i = i + 1
        assert bud.value[0, h].tolist() == want


def test_dynamic_min_budget_clamps_to_visible():
    """min_budget larger than the whole context: every q-block keeps all its visible blocks."""
    Nq, Nk, bq, bk = 100, 100, 16, 16
    q, k = concentrated_qk(Nq, Nk, 16, {0: [2]}, bk, Hq=1)
    bud = DynamicBudget(gamma=0.5, min_budget=10_000).allocate(problem(q, k, bq, bk), None)
    assert bud.value[0, 0].tolist() == [v for v, _ in bf_geometry(Nq, Nk, bq, bk, True)]
    bud = DynamicBudget(gamma=0.5, min_budget=3 * bk + 1).allocate(problem(q, k, bq, bk), None)
    assert bud.value[0, 0].tolist() == [min(max(-(-1 * v // 7), 4), v) for v, _ in bf_geometry(Nq, Nk, bq, bk, True)]


# ------------------------------------------------------------------------------------------------
# topk mask

TOPK_CASES = [
    # (B, Hq, G, Nq, Nk, bq, bk, causal, score_kind)
    pytest.param(2, 4, 1, 200, 200, 32, 32, True, "random", id="G1-random"),
    pytest.param(1, 8, 4, 130, 300, 16, 32, True, "ties", id="G4-ties-chunked-offset-diagonals"),
    pytest.param(1, 7, 7, 100, 100, 32, 16, True, "nan", id="G=Hq-nan"),
    pytest.param(2, 4, 2, 77, 251, 32, 16, True, "inf", id="pm-inf-ragged"),
    pytest.param(1, 4, 2, 90, 200, 32, 32, False, "ties", id="noncausal-ties"),
    pytest.param(1, 2, 1, 200, 90, 32, 16, False, "nan", id="noncausal-Nq>Nk-nan"),
    pytest.param(1, 28, 4, 40, 56, 16, 16, True, "ties", id="gqa7-tiny"),
]


def make_scores(kind: str, B: int, G: int, nQb: int, nKb: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "random":
        s = torch.rand(B, G, nQb, nKb, generator=gen)
    else:
        s = torch.randint(0, 3, (B, G, nQb, nKb), generator=gen).float()
    if kind in ("nan", "inf"):
        r = torch.rand(B, G, nQb, nKb, generator=gen)
        s = torch.where(r < 0.25, torch.tensor(float("nan")), s)
        if kind == "inf":
            s = torch.where((r > 0.25) & (r < 0.4), torch.tensor(float("-inf")), s)
            s = torch.where((r > 0.4) & (r < 0.5), torch.tensor(float("inf")), s)
    return s.float()


@pytest.mark.parametrize("sink,diagonal", [(True, True), (False, False), (True, False), (False, True)])
@pytest.mark.parametrize("B,Hq,G,Nq,Nk,bq,bk,causal,kind", TOPK_CASES)
def test_topk_matches_definition(B, Hq, G, Nq, Nk, bq, bk, causal, kind, sink, diagonal):
    gen = torch.Generator().manual_seed(Nq * 31 + Nk + Hq + G)
    q, k = rand_qk(1, B, Hq, 1, Nq, Nk, 16)
    prob = problem(q, k, bq, bk, causal)
    nQb, nKb = prob.nQb, prob.nKb
    scores = make_scores(kind, B, G, nQb, nKb, gen)  # garbage also in invisible blocks: must never be picked
    budget = torch.randint(0, nKb + 3, (B, Hq, nQb), generator=gen, dtype=torch.int32)
    layout = TopKMask(sink=sink, diagonal=diagonal).build(prob, BlockScores(scores, "mass"), Budget("count", budget))
    want = bf_topk(scores, budget, Nq, Nk, bq, bk, causal, sink, diagonal)
    assert layout_rows(layout) == want
    check_layout_format(layout)


def test_topk_varlen_problem():
    """topk handles per-sequence lengths itself (supports_varlen): blocks past a sequence are never kept."""
    B, Hq, G, Nq, Nk, bq, bk = 3, 4, 2, 150, 250, 32, 32
    ql, kl = [150, 61, 20], [250, 100, 170]
    gen = torch.Generator().manual_seed(8)
    q, k = rand_qk(2, B, Hq, 2, Nq, Nk, 16)
    prob = problem(q, k, bq, bk, True, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl))
    scores = make_scores("ties", B, G, prob.nQb, prob.nKb, gen)
    budget = torch.randint(0, prob.nKb + 2, (B, Hq, prob.nQb), generator=gen, dtype=torch.int32)
    layout = TopKMask().build(prob, BlockScores(scores, "rank"), Budget("count", budget))
    assert layout_rows(layout) == bf_topk(scores, budget, Nq, Nk, bq, bk, True, q_lens=ql, k_lens=kl)
    check_layout_format(layout)


def test_topk_zero_budget_without_forced_blocks_is_empty():
    q, k = rand_qk(4, 1, 2, 1, 64, 64, 16)
    prob = problem(q, k, 32, 32)
    scores = torch.rand(1, 1, 2, 2)
    layout = TopKMask(sink=False, diagonal=False).build(prob, BlockScores(scores), Budget("count", torch.zeros(1, 2, 2, dtype=torch.int32)))
    assert layout.max_k == 0 and int(layout.kv_counts.sum()) == 0
    layout.validate()


def test_topk_hand_made():
    """Nq=Nk=128, blocks 32: q-block 3 sees 4 blocks; scores pick block 1 over 2; sink 0 and diagonal 3 forced."""
    q, k = rand_qk(4, 1, 1, 1, 128, 128, 16)
    prob = problem(q, k, 32, 32)
    s = torch.full((1, 1, 4, 4), float("-inf"))
    s[0, 0, 3] = torch.tensor([0.0, 0.5, 0.4, 0.1])
    s[0, 0, 2, :3] = torch.tensor([float("nan"), 0.2, 0.2])
    budget = torch.tensor([[[1, 1, 1, 3]]], dtype=torch.int32)
    layout = TopKMask().build(prob, BlockScores(s), Budget("count", budget))
    assert layout_rows(layout)[0][0] == [[0], [0, 1], [0, 2], [0, 1, 3]]
    budget = torch.tensor([[[4, 4, 4, 4]]], dtype=torch.int32)
    layout = TopKMask().build(prob, BlockScores(s), Budget("count", budget))
    assert layout_rows(layout)[0][0] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    layout = TopKMask(sink=False, diagonal=False).build(prob, BlockScores(s), Budget("count", torch.tensor([[[1, 1, 1, 2]]], dtype=torch.int32)))
    # q-block 2: NaN at block 0 ranks lowest; 0.2 tie between blocks 1 and 2 goes to block 1
    assert layout_rows(layout)[0][0] == [[0], [0], [1], [1, 2]]  # q-block 1: -inf tie -> block 0


# ------------------------------------------------------------------------------------------------
# fixed budget and dense mask

FIXED_GEOMS = [
    # (Nq, Nk, bq, bk, causal)
    pytest.param(200, 200, 32, 32, True, id="prefill"),
    pytest.param(70, 290, 16, 32, True, id="chunked"),
    pytest.param(90, 170, 32, 16, False, id="noncausal"),
]


@pytest.mark.parametrize("blocks,ratio", [(None, 1.0), (None, 0.1), (None, 0.35), (None, 0.5), (1, None),
                                          (3, None), (1000, None)])
@pytest.mark.parametrize("Nq,Nk,bq,bk,causal", FIXED_GEOMS)
def test_fixed_budget(Nq, Nk, bq, bk, causal, blocks, ratio):
    q, k = rand_qk(9, 2, 6, 3, Nq, Nk, 16)
    bud = FixedBudget(blocks=blocks, ratio=ratio).allocate(problem(q, k, bq, bk, causal), None)
    vis = [v for v, _ in bf_geometry(Nq, Nk, bq, bk, causal)]
    want = [min(v, blocks) if blocks is not None else math.ceil(Fraction(str(ratio)) * v) for v in vis]
    assert bud.kind == "count" and bud.value.dtype == torch.int32
    assert tuple(bud.value.shape) == (2, 6, len(vis))
    assert bud.value.tolist() == [[want] * 6] * 2


def test_fixed_budget_varlen():
    ql, kl = [100, 33, 64], [200, 33, 150]
    q, k = rand_qk(10, 3, 2, 1, 100, 200, 16)
    bud = FixedBudget(ratio=0.5).allocate(problem(q, k, 32, 32, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl)), None)
    for b in range(3):
        want = [math.ceil(v / 2) for v, _ in bf_geometry(100, 200, 32, 32, True, ql[b], kl[b])]
        assert bud.value[b].tolist() == [want] * 2


def test_fixed_budget_ratio_exact_integer_ceil():
    Nq = Nk = 25 * 16  # the last q-block sees 25 kv-blocks
    q, k = rand_qk(12, 1, 1, 1, Nq, Nk, 16)
    bud = FixedBudget(ratio=0.28).allocate(problem(q, k, 16, 16), None)
    assert int(bud.value[0, 0, -1]) == 7


@pytest.mark.parametrize("Nq,Nk,bq,bk,causal", FIXED_GEOMS + [pytest.param(200, 90, 32, 16, False, id="noncausal-Nq>Nk")])
def test_dense_mask_is_all_visible(Nq, Nk, bq, bk, causal):
    q, k = rand_qk(13, 2, 4, 2, Nq, Nk, 16)
    layout = DenseMask().build(problem(q, k, bq, bk, causal), None, None)
    rows = [list(range(v)) for v, _ in bf_geometry(Nq, Nk, bq, bk, causal)]
    assert layout_rows(layout) == [[rows] * 4] * 2
    check_layout_format(layout)


def test_dense_mask_varlen():
    ql, kl = [100, 33, 64], [200, 33, 150]
    q, k = rand_qk(14, 3, 2, 1, 100, 200, 16)
    layout = DenseMask().build(problem(q, k, 32, 32, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl)), None, None)
    for b in range(3):
        rows = [list(range(v)) for v, _ in bf_geometry(100, 200, 32, 32, True, ql[b], kl[b])]
        assert layout_rows(layout)[b] == [rows] * 2
    check_layout_format(layout)


# ------------------------------------------------------------------------------------------------
# composed ProxyAttn against the brute force (estimator -> budget -> topk) and varlen planning


def test_proxyattn_pipeline_layout_matches_brute_force():
    B, Hq, Hkv, Nq, Nk, bq, bk, D = 1, 8, 2, 160, 224, 32, 32, 16
    q, k = rand_qk(15, B, Hq, Hkv, Nq, Nk, D, q_mult=2.0)
    gamma = pick_gamma(bf_last_mass(q, k, bq, bk, True))
    attn = sparsekit.build(estimator="proxy(g=2,stride=3)", budget=f"dynamic(gamma={gamma},min_budget=40)",
                           kernel="torch", block_q=bq, block_k=bk)
    plan = attn.plan(q, k)
    scores = bf_proxy(q, k, 2, 3, bq, bk, True)
    counts, _ = bf_dynamic(q, k, bq, bk, True, gamma, 40)
    # the construction has no two scores of a row within float32 rounding of each other (no order flips)
    for row in scores.reshape(-1, scores.shape[-1]):
        fin = row[torch.isfinite(row)].sort().values
        assert bool((fin.diff() > 1e-5 * fin[1:]).all())
    want = bf_topk(scores.float(), counts, Nq, Nk, bq, bk, True)
    assert layout_rows(plan.layout) == want
    check_layout_format(plan.layout)


VARLEN_CONFIGS = [
    pytest.param(dict(estimator="proxy(g=1,stride=4)", budget="dynamic(gamma=0.9,min_budget=0)"), True, id="proxy-dynamic"),
    pytest.param(dict(estimator="proxy(g=2,stride=3)", budget="dynamic(gamma=0.8,min_budget=64)"), True, id="proxyG2-dynamic-min"),
    pytest.param(dict(estimator="proxy(g=2,stride=1)", budget="fixed(ratio=0.3)"), True, id="proxyG2-fixed"),
    pytest.param(dict(estimator="proxy(g=1,stride=4)", budget="fixed(blocks=2,ratio=None)"), False, id="noncausal-fixed"),
    pytest.param(dict(estimator="proxy(g=1,stride=4)", budget="dynamic(gamma=0.9,min_budget=0)"), False, id="noncausal-dynamic"),
    pytest.param(dict(estimator=None, budget=None, mask="dense"), True, id="dense"),
]


@pytest.mark.parametrize("lens", [([150, 61, 20], [250, 100, 170]), ([150, 97, 33], None), (None, [250, 160, 199])],
                         ids=["q+k", "q-only", "k-only"])
@pytest.mark.parametrize("cfg,causal", VARLEN_CONFIGS)
def test_varlen_plan_equals_per_sequence_plans(cfg, causal, lens):
    B, Hq, Hkv, Nq, Nk, bq, bk, D = 3, 4, 2, 150, 250, 32, 32, 16
    ql, kl = lens
    if not causal and ql is None:
        pytest.skip("covered by the causal case")
    q, k = rand_qk(16, B, Hq, Hkv, Nq, Nk, D, q_mult=2.0)
    attn = sparsekit.build(**cfg, kernel="torch", block_q=bq, block_k=bk)
    plan = attn.plan(q, k, causal=causal, q_lens=None if ql is None else torch.tensor(ql, dtype=torch.int32),
                     k_lens=None if kl is None else torch.tensor(kl, dtype=torch.int32))
    check_layout_format(plan.layout)
    rows = layout_rows(plan.layout)
    for b in range(B):
        qlb = Nq if ql is None else ql[b]
        klb = Nk if kl is None else kl[b]
        alone = attn.plan(q[b : b + 1, :, :qlb], k[b : b + 1, :, :klb], causal=causal)
        nqb, nkb = alone.problem.nQb, alone.problem.nKb
        for h in range(Hq):
            assert rows[b][h][:nqb] == layout_rows(alone.layout)[0][h], f"sequence {b} head {h}"
            assert all(r == [] for r in rows[b][h][nqb:]), "q-blocks past the sequence keep nothing"
        if alone.scores is not None:
            s = plan.scores.scores[b]
            assert torch.equal(s[:, :nqb, :nkb], alone.scores.scores[0])
            assert bool(torch.isneginf(s[:, nqb:]).all()) and bool(torch.isneginf(s[:, :, nkb:]).all())
        if alone.budget is not None:
            assert torch.equal(plan.budget.value[b, :, :nqb], alone.budget.value[0])
