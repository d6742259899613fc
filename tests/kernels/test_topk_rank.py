"""The top-k rank kernels (``kernels/topk_rank``: launch A ranks + counts + max, launch B selection) against their
plain-torch twins and, end to end, ``TopKMask(impl="triton")`` against ``TopKMask(impl="torch")`` (the
reference), under ``TRITON_INTERPRET=1`` on CPU (compiled on a GPU when one is present).

Equality is exact everywhere: ranks, ``kv_counts``, ascending ``kv_indices``, 0 padding and ``max_k``, on random
scores with ties, NaN / +-inf / -0.0 / denormals, G in {1, 2, Hq} (GQA ratios 1, 2, 4, 7, 8), budgets negative,
zero and above visible, varlen, chunked prefill, non-causal (q-blocks before the keys too), block_q != block_k,
sink / diagonal off, nKb not a power of two, and several chunks of q-block rows.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from sparsekit import AttentionProblem, BlockLayout, BlockScores, Budget  # noqa: E402
from sparsekit.kernels.topk_rank import op, topk_rank_naive, topk_select_naive  # noqa: E402
from sparsekit.plugins.common import masks  # noqa: E402
from sparsekit.plugins.common.masks import TopKMask, topk_rank_rows_per_chunk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32 = torch.finfo(torch.float32)
SPECIAL = torch.tensor([float("nan"), float("inf"), float("-inf"), F32.max, F32.min, 0.0, -0.0, 1e-45, -1e-45,
                        F32.tiny, 1.0, -1.0, 0.5])

try:  # tests/conftest.py (rootdir conftest, no package)
    from conftest import shape_problem
except ImportError:  # pragma: no cover - other import modes
    from tests.conftest import shape_problem

GEOMS = [  # B, Hq, Nq, Nk, bq, bk, causal, q_lens, k_lens
    (1, 4, 128, 128, 16, 16, True, None, None),  # 8 kv-blocks
    (2, 7, 100, 260, 32, 16, True, None, None),  # chunked prefill (two diagonal blocks), bq != bk, nKb = 17
    (1, 8, 96, 160, 16, 32, True, None, None),  # block_q < block_k
    (2, 4, 120, 40, 16, 16, False, None, None),  # non-causal Nq > Nk: q-blocks 0-4 lie before the keys
    (3, 4, 150, 250, 32, 16, True, [150, 61, 1], [250, 100, 33]),  # varlen, empty q-blocks
    (2, 4, 70, 90, 16, 16, False, [70, 9], [90, 50]),  # varlen, non-causal
]
IDS = ["B{}H{}q{}k{}b{}x{}{}{}".format(*g[:6], "c" if g[6] else "n", "v" if g[7] else "") for g in GEOMS]


def make_problem(B, Hq, Nq, Nk, bq, bk, causal, q_lens=None, k_lens=None, device=DEVICE) -> AttentionProblem:
    return shape_problem(B, Hq, Nq, Nk, bq, bk, causal, q_lens, k_lens, device=device)


def random_scores(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "float":
        return torch.randn(shape, generator=gen)
    if kind == "ties":  # rounded to a few values: ties decided by the block index
        return (torch.randn(shape, generator=gen) * 1.5).round() / 2 + 0.25
    if kind == "special":
        return SPECIAL[torch.randint(0, len(SPECIAL), shape, generator=gen)]
    raise AssertionError(kind)


def groups(Hq: int) -> list[int]:
    return sorted({1, 2, Hq} & {g for g in range(1, Hq + 1) if Hq % g == 0})


def assert_same_layout(got: BlockLayout, want: BlockLayout) -> None:
    assert got.max_k == want.max_k
    assert got.kv_counts.dtype == got.kv_indices.dtype == torch.int32
    assert got.kv_indices.shape == want.kv_indices.shape and got.kv_indices.is_contiguous()
    assert torch.equal(got.kv_counts.cpu(), want.kv_counts.cpu())
    assert torch.equal(got.kv_indices.cpu(), want.kv_indices.cpu())


# ------------------------------------------------------------------------------------------------
# the kernels against their twins


@pytest.mark.parametrize("kind", ["ties", "special"])  # plain floats: end to end below
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_kernels_match_naive(geom, kind):
    prob = make_problem(*geom)
    B, Hq, nQb, nKb = prob.B, prob.Hq, prob.nQb, prob.nKb
    first, last, visible = prob.block_bounds()
    gen = torch.Generator().manual_seed(sum(geom[:6]) * 3 + len(kind))
    flags = [(True, True), (False, False), (True, False), (False, True)]
    for n_case, G in enumerate(groups(Hq)):
        sink, diagonal = flags[(n_case + len(kind)) % 4]
        scores = random_scores(kind, (B, G, nQb, nKb), gen)
        budget = torch.randint(-2, nKb + 4, (B, Hq, nQb), generator=gen, dtype=torch.int32)
        want = topk_rank_naive(scores, first.cpu(), last.cpu(), visible.cpu(), sink, diagonal, budget)
        got = op.topk_rank(scores.to(DEVICE), first, last, visible, sink, diagonal, budget.to(DEVICE))
        for g, w, name in zip(got, want, ("rank", "counts", "max_k")):
            assert g.dtype == w.dtype == torch.int32 and g.shape == w.shape, name
            assert torch.equal(g.cpu(), w), (name, G, sink, diagonal)
        rank, counts, max_k = want
        assert sorted(rank[0, 0, 0].tolist()) == list(range(nKb))  # a permutation
        # launch B into a strided slice of a larger tensor: every slot written, nothing outside
        K = int(max_k) + 1  # one extra padding column
        big = torch.full((B, Hq, nQb + 2, K), -7, dtype=torch.int32, device=DEVICE)
        op.topk_select(got[0], got[1], visible, big[:, :, 1:-1])
        ref = topk_select_naive(rank, counts, visible.cpu(), torch.empty(B, Hq, nQb, K, dtype=torch.int32))
        assert torch.equal(big[:, :, 1:-1].cpu(), ref)
        assert bool((big[:, :, 0] == -7).all()) and bool((big[:, :, -1] == -7).all())


def test_rank_only_and_counts_only():
    """``ranks=False`` gives counts and max alone; without a budget, ranks alone (the chunked mask's two modes)."""
    prob = make_problem(2, 4, 100, 260, 32, 16, True)
    first, last, visible = prob.block_bounds()
    gen = torch.Generator().manual_seed(1)
    scores = random_scores("special", (2, 2, prob.nQb, prob.nKb), gen).to(DEVICE)
    budget = torch.randint(-2, prob.nKb + 4, (2, 4, prob.nQb), generator=gen, dtype=torch.int32).to(DEVICE)
    full = op.topk_rank(scores, first, last, visible, True, True, budget)
    rank_none, counts, max_k = op.topk_rank(scores, first, last, visible, True, True, budget, ranks=False)
    assert rank_none is None and torch.equal(counts, full[1]) and torch.equal(max_k, full[2])
    rows = slice(1, 3)  # a row slice of the scores and bounds, as a chunk
    rank, c_none, m_none = op.topk_rank(scores[:, :, rows], first[:, rows], last[:, rows], visible[:, rows],
                                        True, True)
    assert c_none is None and m_none is None and torch.equal(rank, full[0][:, :, rows])


NARROW_CASES = [  # causal rows seeing 1 .. nKb blocks, so the quarter, half and full sorts all run; kind, G, sink, diag
    ((1, 4, 1024, 1024, 16, 16, True, None, None), "special", 2, True, True),  # nKb = 64: sorts of 16, 32, 64 keys
    ((2, 4, 900, 1000, 16, 16, True, None, None), "ties", 1, False, True),  # chunked prefill, nKb = 63
    ((2, 4, 900, 900, 16, 16, True, [900, 200], [900, 200]), "special", 2, True, False),  # varlen
]


@pytest.mark.parametrize("narrow", [1, 2])
@pytest.mark.parametrize("case", NARROW_CASES, ids=["square", "chunked", "varlen"])
def test_narrow_sorts_give_the_full_ranks(case, narrow):
    """Rows seeing at most half / a quarter of the blocks sort that many keys: the ranks (a full permutation,
    blocks past the sort at rank j), counts and max equal the twin's exactly, on ties and special values."""
    geom, kind, G, sink, diagonal = case
    prob = make_problem(*geom)
    first, last, visible = prob.block_bounds()
    vis, width = visible.cpu(), 64  # the sort of nKb <= 64 blocks
    assert int(vis.min()) <= width // 4 and int(vis.max()) > width // 2  # every branch is taken
    gen = torch.Generator().manual_seed(11 + prob.nKb + narrow)
    scores = random_scores(kind, (prob.B, G, prob.nQb, prob.nKb), gen)
    budget = torch.randint(-2, prob.nKb + 4, (prob.B, prob.Hq, prob.nQb), generator=gen, dtype=torch.int32)
    want = topk_rank_naive(scores, first.cpu(), last.cpu(), vis, sink, diagonal, budget)
    got = op.topk_rank(scores.to(DEVICE), first, last, visible, sink, diagonal, budget.to(DEVICE), narrow=narrow)
    for g, w, name in zip(got, want, ("rank", "counts", "max_k")):
        assert torch.equal(g.cpu(), w), name


def test_narrow_is_checked_and_automatic():
    assert [op.narrow_for(b) for b in (16, 64, 128, 256, 1024)] == [0, 0, 1, 2, 2]
    prob = make_problem(1, 4, 128, 128, 16, 16, True)
    first, last, visible = prob.block_bounds()
    scores = torch.rand(1, 1, prob.nQb, prob.nKb, device=DEVICE)
    with pytest.raises(ValueError, match=r"narrow=3 \(supported: None, 0, 1, 2\)"):
        op.topk_rank(scores, first, last, visible, True, True, narrow=3)


# ------------------------------------------------------------------------------------------------
# the mask end to end: impl="triton" (the kernels) against impl="torch" (the reference)


def test_naive_chain_equals_torch_mask():
    """The twins' chain (plain torch, so many cases) builds exactly ``TopKMask(impl="torch")``'s layout."""
    for geom in GEOMS:
        prob = make_problem(*geom, device="cpu")
        B, Hq, nQb, nKb = prob.B, prob.Hq, prob.nQb, prob.nKb
        first, last, visible = prob.block_bounds()
        gen = torch.Generator().manual_seed(sum(geom[:6]))
        for kind in ("float", "ties", "special"):
            for G in groups(Hq):
                for sink, diagonal in ((True, True), (False, False), (True, False), (False, True)):
                    scores = random_scores(kind, (B, G, nQb, nKb), gen)
                    budget = torch.randint(-2, nKb + 4, (B, Hq, nQb), generator=gen, dtype=torch.int32)
                    want = TopKMask(sink=sink, diagonal=diagonal, impl="torch").build(
                        prob, BlockScores(scores), Budget("count", budget))
                    rank, counts, max_k = topk_rank_naive(scores, first, last, visible, sink, diagonal, budget)
                    out = torch.empty(B, Hq, nQb, int(max_k), dtype=torch.int32)
                    topk_select_naive(rank, counts, visible, out)
                    assert int(max_k) == want.max_k and torch.equal(counts, want.kv_counts)
                    assert torch.equal(out, want.kv_indices), (geom, kind, G, sink, diagonal)


def spy(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(op, name)

    def wrapped(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(op, name, wrapped)
    return calls


@pytest.mark.parametrize("rows_per_chunk", [None, 2])
@pytest.mark.parametrize("geom", [GEOMS[1], GEOMS[3], GEOMS[4]], ids=[IDS[1], IDS[3], IDS[4]])
def test_mask_triton_equals_torch(geom, rows_per_chunk, monkeypatch):
    if rows_per_chunk is not None:
        monkeypatch.setattr(masks, "topk_rank_rows_per_chunk", lambda *a, **kw: rows_per_chunk)
    selects = spy(monkeypatch, "topk_select")
    prob_dev, prob_cpu = make_problem(*geom), make_problem(*geom, device="cpu")
    B, Hq, nQb, nKb = prob_cpu.B, prob_cpu.Hq, prob_cpu.nQb, prob_cpu.nKb
    gen = torch.Generator().manual_seed(7 + nKb)
    n_builds = 0
    for G, kind, sink, diagonal in ((1, "special", True, True), (Hq, "ties", False, False), (2, "float", True, False)):
        if Hq % G:
            continue
        scores = random_scores(kind, (B, G, nQb, nKb), gen)
        budget = torch.randint(-2, nKb + 4, (B, Hq, nQb), generator=gen, dtype=torch.int32)
        want = TopKMask(sink=sink, diagonal=diagonal, impl="torch").build(prob_cpu, BlockScores(scores),
                                                                           Budget("count", budget))
        got = TopKMask(sink=sink, diagonal=diagonal, impl="triton").build(
            prob_dev, BlockScores(scores.to(DEVICE)), Budget("count", budget.to(DEVICE)))
        assert_same_layout(got, want)
        got.validate()
        n_builds += 1
    chunks = 1 if rows_per_chunk is None else -(-nQb // rows_per_chunk)
    assert len(selects) == n_builds * chunks and n_builds >= 2
    assert rows_per_chunk is None or chunks > 1


def test_chunk_mb_sets_the_chunks(monkeypatch):
    """``chunk_mb`` bounds the rank tensor ``[B, G, rows, nKb]`` int32: at 1 MiB, 128 groups of 1100 kv-blocks
    (550 KiB a row) give one row per chunk, 32 groups of 2048 (256 KiB) four; never zero rows. (Sizes that make
    ``chunk_mb=1`` split a real problem take minutes under the interpreter: the end-to-end chunking is checked
    above with a patched row count; here the mask passes its ``chunk_mb`` to the formula.)"""
    assert topk_rank_rows_per_chunk(1, 128, 1100, 1) == 1
    assert topk_rank_rows_per_chunk(1, 32, 2048, 1) == 4
    assert topk_rank_rows_per_chunk(2, 1, 8192, 1024) == 16384  # 1M tokens, G = 1: one chunk
    assert topk_rank_rows_per_chunk(1, 10**4, 10**4, 1) == 1
    seen = []
    monkeypatch.setattr(masks, "topk_rank_rows_per_chunk", lambda *a: seen.append(a) or 1)
    prob = make_problem(*GEOMS[0])
    scores = BlockScores(torch.rand(1, 2, prob.nQb, prob.nKb, device=DEVICE))
    budget = Budget("count", torch.full((1, 4, prob.nQb), 3, dtype=torch.int32, device=DEVICE))
    TopKMask(chunk_mb=3, impl="triton").build(prob, scores, budget)
    assert seen == [(1, 2, prob.nKb, 3)]


def test_mask_zero_max_k():
    """Budgets of 0 without forced blocks: an empty layout, as the torch path gives."""
    geom = GEOMS[3]
    gen = torch.Generator().manual_seed(4)
    prob_cpu = make_problem(*geom, device="cpu")
    scores = random_scores("float", (2, 2, prob_cpu.nQb, prob_cpu.nKb), gen)
    budget = torch.zeros(2, 4, prob_cpu.nQb, dtype=torch.int32)
    want = TopKMask(sink=False, diagonal=False, impl="torch").build(prob_cpu, BlockScores(scores),
                                                                    Budget("count", budget))
    got = TopKMask(sink=False, diagonal=False, impl="triton").build(
        make_problem(*geom), BlockScores(scores.to(DEVICE)), Budget("count", budget.to(DEVICE)))
    assert want.max_k == 0
    assert_same_layout(got, want)


def test_mask_falls_back_above_max_blocks(monkeypatch):
    """nKb above MAX_BLOCKS: the kernel refuses with a reason and the mask takes the torch-sort path."""
    monkeypatch.setattr(op, "MAX_BLOCKS", 4)
    ranks = spy(monkeypatch, "topk_rank")
    prob = make_problem(1, 4, 128, 128, 16, 16, True)  # 8 kv-blocks
    first, last, visible = prob.block_bounds()
    gen = torch.Generator().manual_seed(5)
    scores = random_scores("ties", (1, 2, 8, 8), gen).to(DEVICE)
    budget = torch.randint(-2, 12, (1, 4, 8), generator=gen, dtype=torch.int32).to(DEVICE)
    reasons = op.not_supported_reasons(scores, first, last, visible, budget)
    assert reasons == ["nKb=8 kv-blocks (supported: <= 4): use larger blocks or the torch path"]
    got = TopKMask(impl="triton").build(prob, BlockScores(scores), Budget("count", budget))
    want = TopKMask(impl="torch").build(make_problem(1, 4, 128, 128, 16, 16, True, device="cpu"),
                                        BlockScores(scores.cpu()), Budget("count", budget.cpu()))
    assert_same_layout(got, want)
    assert not ranks


def test_mask_sorts_with_torch_above_rank_max_blocks(monkeypatch):
    """Above ``masks.RANK_MAX_BLOCKS`` (measured: the torch sort wins from 2048 kv-blocks) the Triton path sorts with
    torch and compacts with ``topk_compact``: no rank launch, the same layout."""
    assert masks.RANK_MAX_BLOCKS == 1024
    monkeypatch.setattr(masks, "RANK_MAX_BLOCKS", 7)
    ranks = spy(monkeypatch, "topk_rank")
    gen = torch.Generator().manual_seed(6)
    for nk in (112, 128):  # 7 kv-blocks: ranked; 8: sorted with torch
        prob = make_problem(1, 4, 112, nk, 16, 16, True)
        scores = random_scores("special", (1, 1, 7, prob.nKb), gen).to(DEVICE)
        budget = torch.randint(-2, 12, (1, 4, 7), generator=gen, dtype=torch.int32).to(DEVICE)
        got = TopKMask(impl="triton").build(prob, BlockScores(scores), Budget("count", budget))
        want = TopKMask(impl="torch").build(make_problem(1, 4, 112, nk, 16, 16, True, device="cpu"),
                                            BlockScores(scores.cpu()), Budget("count", budget.cpu()))
        assert_same_layout(got, want)
    assert len(ranks) == 1


# ------------------------------------------------------------------------------------------------
# bad inputs


def test_rejects_bad_inputs():
    prob = make_problem(1, 4, 64, 64, 16, 16, True)
    first, last, visible = prob.block_bounds()
    scores = torch.rand(1, 2, 4, 4, device=DEVICE)
    budget = torch.ones(1, 4, 4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"scores float16 \(1, 2, 4, 4\) \(supported: float32"):
        op.topk_rank(scores.half(), first, last, visible, True, True, budget)
    with pytest.raises(ValueError, match=r"budget int64 \(1, 4, 4\) \(supported: int32 \[B, Hq, n\]"):
        op.topk_rank(scores, first, last, visible, True, True, budget.long())
    with pytest.raises(ValueError, match=r"budget int32 \(1, 3, 4\) \(supported: int32 \[B, Hq, n\] with G=2"):
        op.topk_rank(scores, first, last, visible, True, True, budget[:, :3])
    with pytest.raises(ValueError, match=r"last int64 \(1, 3\) \(supported: integer \[B, n\] = \[1, 4\]"):
        op.topk_rank(scores, first, last[:, :3], visible, True, True, budget)
    with pytest.raises(ValueError, match=r"visible float32"):
        op.topk_rank(scores, first, last, visible.float(), True, True, budget)
    rank, counts, _ = op.topk_rank(scores, first, last, visible, True, True, budget)
    out = torch.empty(1, 4, 4, 2, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"rank int64 \(1, 2, 4, 4\) \(supported: int32"):
        op.topk_select(rank.long(), counts, visible, out)
    with pytest.raises(ValueError, match=r"counts int32 \(1, 4, 3\) \(supported: int32 \[B, Hq, n\]"):
        op.topk_select(rank, counts[:, :, :3], visible, out)
    with pytest.raises(ValueError, match=r"out int64 \(1, 4, 4, 2\) \(supported: int32 \[B, Hq, n, K\]"):
        op.topk_select(rank, counts, visible, out.long())
    with pytest.raises(ValueError, match=r"visible int64 \(1, 2\)"):
        op.topk_select(rank, counts, visible[:, :2], out)
