"""``topk`` (``plugins/common/masks.py``): the rank-compaction implementation against the previous algorithm
(expand the group order to every head, mask, sort again per head), kept verbatim below as the oracle.

Equality is exact: same ``kv_counts``, same ascending ``kv_indices``, same 0 padding, same ``max_k``, on random
cases with ties, NaN/inf scores, G in {1, 2, Hq}, per-head counts (negative and over-visible too), varlen,
chunked prefill (Nq < Nk), non-causal and block_q != block_k, and for every chunking of the q-block rows.
The memory test measures, on CPU, the peak of the tensors alive during ``build`` (a dispatch mode that sees
every op's outputs) and checks the chunking bounds it.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import sparsekit
from sparsekit import AttentionProblem, BlockLayout, BlockScores, Budget
from sparsekit.plugins.common import masks
from sparsekit.plugins.common.masks import TopKMask, forced_blocks, forced_count, topk_rows_per_chunk


# ------------------------------------------------------------------------------------------------
# the previous implementation (TopKMask.build before the rank compaction), verbatim: the oracle


def old_forced_blocks(problem: AttentionProblem, sink: bool, diagonal: bool) -> torch.Tensor:
    first, last, visible = problem.block_bounds()
    j = torch.arange(problem.nKb, device=problem.device)[None, None, :]
    vis = j < visible[:, :, None]
    forced = torch.zeros_like(vis)
    if sink:
        forced |= j == 0
    if diagonal:
        forced |= (j >= first[:, :, None]) & (j <= last[:, :, None])
    return forced & vis


def old_topk(problem: AttentionProblem, scores: BlockScores, budget: Budget, sink: bool = True,
             diagonal: bool = True) -> BlockLayout:
    B, Hq, nQb, nKb = problem.B, problem.Hq, problem.nQb, problem.nKb
    G = scores.groups
    _, _, visible = problem.block_bounds()  # [B, nQb]
    forced = old_forced_blocks(problem, sink, diagonal)  # [B, nQb, nKb]
    vis = torch.arange(nKb, device=problem.device)[None, None, :] < visible[:, :, None]

    count = torch.minimum(budget.value.long(), visible[:, None, :])
    count = torch.maximum(count, forced.sum(-1)[:, None, :])  # [B, Hq, nQb]
    max_k = int(count.max()) if count.numel() else 0  # host sync: max_k sizes the layout
    if max_k == 0:
        empty = torch.zeros(B, Hq, nQb, 0, dtype=torch.int32, device=problem.device)
        return BlockLayout.for_problem(problem, count.to(torch.int32), empty)

    key = torch.nan_to_num(scores.scores, nan=float("-inf"))
    key = key.masked_fill(~vis[:, None], float("-inf")).masked_fill(forced[:, None], float("inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :max_k]  # [B, G, nQb, max_k]
    order = order[:, :, None].expand(B, G, Hq // G, nQb, max_k).reshape(B, Hq, nQb, max_k)
    keep = torch.arange(max_k, device=problem.device) < count[..., None]
    idx = torch.where(keep, order, nKb).sort(-1).values
    idx = torch.where(idx == nKb, 0, idx).to(torch.int32).contiguous()
    return BlockLayout.for_problem(problem, count.to(torch.int32).contiguous(), idx)


# ------------------------------------------------------------------------------------------------
# helpers


def assert_same(new: BlockLayout, old: BlockLayout) -> None:
    assert new.kv_counts.dtype == old.kv_counts.dtype == torch.int32
    assert new.kv_indices.dtype == old.kv_indices.dtype == torch.int32
    assert new.max_k == old.max_k
    assert new.kv_counts.shape == old.kv_counts.shape and new.kv_indices.shape == old.kv_indices.shape
    assert torch.equal(new.kv_counts, old.kv_counts)
    assert torch.equal(new.kv_indices, old.kv_indices)
    assert new.kv_indices.is_contiguous() and new.kv_counts.is_contiguous()


try:  # tests/conftest.py (rootdir conftest, no package)
    from conftest import shape_problem
except ImportError:  # pragma: no cover - other import modes
    from tests.conftest import shape_problem

#: where impl="triton" runs: compiled on a GPU, else the interpreter on the CPU (tests/conftest.py)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_problem(B, Hq, Nq, Nk, bq, bk, causal, q_lens=None, k_lens=None, D=4, device="cpu") -> AttentionProblem:
    return shape_problem(B, Hq, Nq, Nk, bq, bk, causal, q_lens, k_lens, D=D, device=device)


def random_scores(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "float":
        return torch.rand(shape, generator=gen)
    if kind == "ties":  # few distinct values: many ties, decided by the block index
        return torch.randint(0, 3, shape, generator=gen).float()
    if kind == "special":  # NaN, +-inf, float32 extremes and ties among them
        pool = torch.tensor([float("nan"), float("inf"), float("-inf"), torch.finfo(torch.float32).max,
                             torch.finfo(torch.float32).min, 0.0, 1.0, -1.0, 0.5])
        return pool[torch.randint(0, len(pool), shape, generator=gen)]
    if kind == "constant":
        return torch.zeros(shape)
    raise AssertionError(kind)


def random_budget(shape: tuple[int, ...], nKb: int, gen: torch.Generator, mode: str) -> torch.Tensor:
    if mode == "any":  # negative, zero, and above the visible count too
        return torch.randint(-2, nKb + 4, shape, generator=gen, dtype=torch.int32)
    if mode == "small":
        return torch.randint(0, 3, shape, generator=gen, dtype=torch.int32)
    if mode == "per_head":  # one ratio per head, ceil(r_h * visible) style (the dynamic budget's shape)
        r = torch.rand(shape[0], shape[1], 1, generator=gen)
        return (r * nKb).ceil().expand(shape).to(torch.int32).contiguous()
    raise AssertionError(mode)


GEOMS = [
    # (B, Hq, Nq, Nk, bq, bk, causal)
    (1, 4, 128, 128, 16, 16, True),
    (2, 4, 200, 200, 32, 32, True),  # partial last block
    (1, 6, 96, 300, 16, 16, True),  # chunked prefill Nq < Nk
    (2, 4, 100, 260, 32, 16, True),  # block_q != block_k, chunked prefill
    (1, 4, 96, 160, 16, 32, True),  # block_q < block_k
    (2, 4, 120, 200, 32, 32, False),  # non-causal
    (1, 8, 64, 500, 16, 64, False),  # non-causal, bq != bk
    (1, 2, 16, 16, 16, 16, True),  # a single block
    (2, 4, 200, 40, 16, 16, False),  # non-causal Nq > Nk: early q-blocks have no diagonal block
]


# ------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("rows_per_chunk", [None, 1, 3])
@pytest.mark.parametrize("kind", ["float", "ties", "special", "constant"])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: "B{}H{}q{}k{}b{}x{}{}".format(*g[:6], "c" if g[6] else "n"))
def test_topk_equals_previous_algorithm(geom, kind, rows_per_chunk, monkeypatch):
    check_against_old(geom, kind, rows_per_chunk, monkeypatch, "torch")


@pytest.mark.parametrize("rows_per_chunk", [None, 2])
@pytest.mark.parametrize("kind", ["special"])
@pytest.mark.parametrize("geom", GEOMS[2:4] + GEOMS[6:8],
                         ids=lambda g: "B{}H{}q{}k{}b{}x{}{}".format(*g[:6], "c" if g[6] else "n"))
def test_topk_triton_equals_previous_algorithm(geom, kind, rows_per_chunk, monkeypatch):
    """The Triton compaction kernel (interpreter on CPU: slow, so fewer cases) on the same cases."""
    check_against_old(geom, kind, rows_per_chunk, monkeypatch, "triton")


def check_against_old(geom, kind, rows_per_chunk, monkeypatch, impl):
    B, Hq, Nq, Nk, bq, bk, causal = geom
    if rows_per_chunk is not None:
        monkeypatch.setattr(masks, "topk_rows_per_chunk", lambda *a, **kw: rows_per_chunk)
    dev = TRITON_DEVICE if impl == "triton" else "cpu"
    prob = make_problem(B, Hq, Nq, Nk, bq, bk, causal, device=dev)
    seed = sum(geom[:6]) * 7 + len(kind)
    gen = torch.Generator().manual_seed(seed)
    n_cases = 0
    quick = impl == "triton"
    for G in sorted({1, 2, Hq} & {g for g in range(1, Hq + 1) if Hq % g == 0}):
        for mode in ("any", "per_head") if quick else ("any", "small", "per_head"):
            for sink, diagonal in ((True, True), (False, False)) if quick else (
                    (True, True), (False, False), (True, False), (False, True)):
                scores = BlockScores(random_scores(kind, (B, G, prob.nQb, prob.nKb), gen).to(dev))
                budget = Budget("count", random_budget((B, Hq, prob.nQb), prob.nKb, gen, mode).to(dev))
                new = TopKMask(sink=sink, diagonal=diagonal, impl=impl).build(prob, scores, budget)
                assert_same(new, old_topk(prob, scores, budget, sink, diagonal))
                new.validate()
                n_cases += 1
    assert n_cases >= (8 if quick else 24)


@pytest.mark.parametrize("causal,rows_per_chunk,impl", [
    (True, None, "torch"), (True, 2, "torch"), (False, None, "torch"), (False, 2, "torch"), (True, 2, "triton")])
def test_topk_varlen_direct(causal, rows_per_chunk, impl, monkeypatch):
    if rows_per_chunk is not None:
        monkeypatch.setattr(masks, "topk_rows_per_chunk", lambda *a, **kw: rows_per_chunk)
    ql, kl = [150, 61, 20, 1], [250, 100, 170, 33]
    dev = TRITON_DEVICE if impl == "triton" else "cpu"
    prob = make_problem(4, 4, 150, 250, 32, 16, causal, q_lens=ql, k_lens=kl, device=dev)
    gen = torch.Generator().manual_seed(3)
    for G in (1, 2, 4) if impl == "torch" else (2,):
        for kind in ("ties", "special", "float") if impl == "torch" else ("special",):
            scores = BlockScores(random_scores(kind, (4, G, prob.nQb, prob.nKb), gen).to(dev))
            budget = Budget("count", random_budget((4, 4, prob.nQb), prob.nKb, gen, "any").to(dev))
            for sink, diagonal in ((True, True), (False, False)):
                assert_same(TopKMask(sink=sink, diagonal=diagonal, impl=impl).build(prob, scores, budget),
                            old_topk(prob, scores, budget, sink, diagonal))


@pytest.mark.parametrize("lens", [([70, 128, 9], [70, 200, 300]), ([128, 128, 128], [128, 128, 128])])
@pytest.mark.parametrize("g", [1, 2])
def test_topk_varlen_through_plan(lens, g):
    """``sparsekit.build("proxyattn").plan(..., q_lens=, k_lens=)``: the planned layout equals the old algorithm
    on the same (stitched) scores and budget."""
    ql, kl = lens
    gen = torch.Generator().manual_seed(11 + g)
    q = torch.randn(3, 4, 128, 16, generator=gen)
    k = torch.randn(3, 2, 300, 16, generator=gen)
    attn = sparsekit.build("proxyattn", estimator={"g": g, "impl": "torch"},
                           budget={"min_budget": 32, "impl": "torch"}, block_q=16, block_k=16)
    plan = attn.plan(q, k, q_lens=torch.tensor(ql), k_lens=torch.tensor(kl), timed=False)
    assert isinstance(attn.mask, TopKMask)
    assert_same(plan.layout, old_topk(plan.problem, plan.scores, plan.budget, attn.mask.sink, attn.mask.diagonal))


def test_forced_count_equals_forced_blocks_sum():
    gen = torch.Generator().manual_seed(5)
    for B, Hq, Nq, Nk, bq, bk, causal in GEOMS:
        ql = torch.randint(1, Nq + 1, (B,), generator=gen).tolist()
        kl = torch.randint(1, Nk + 1, (B,), generator=gen).tolist()
        if causal:
            kl = [max(k, q) for k, q in zip(kl, ql)]
        for lens in ((None, None), (ql, kl)):
            prob = make_problem(B, Hq, Nq, Nk, bq, bk, causal, *lens)
            first, last, visible = prob.block_bounds()
            for sink in (True, False):
                for diagonal in (True, False):
                    want = old_forced_blocks(prob, sink, diagonal)
                    assert torch.equal(forced_blocks(prob, sink, diagonal), want)
                    assert torch.equal(forced_count(first, last, visible, sink, diagonal), want.sum(-1))


def test_topk_tuning_options():
    """``chunk_mb`` / ``impl`` never change results, so they are left out of the label (``"tuning"``)."""
    assert TopKMask(chunk_mb=1, impl="torch").label == TopKMask().label == "topk(sink=True,diagonal=True)"
    with pytest.raises(sparsekit.ConfigError):
        TopKMask(chunk_mb=0)
    with pytest.raises(sparsekit.ConfigError):
        TopKMask(impl="cuda")


@pytest.mark.parametrize("K,block", [(1, 1024), (5, 16), (37, 16), (300, 64), (1100, 1024)])
@pytest.mark.parametrize("G,Hq", [(1, 4), (2, 4), (3, 3)])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_compact_kernel_equals_naive(K, block, G, Hq, idx_dtype):
    """``topk_compact`` (Triton, several tiles per row when K > block) equals its torch twin on random
    permutations and counts 0..K, into a strided slice of a larger output; int32 or int64 candidates (``sort``
    returns int64, which the mask passes as is)."""
    from sparsekit.kernels.topk_compact import topk_compact, topk_compact_naive

    gen = torch.Generator().manual_seed(K * 7 + G)
    B, n, nKb = 2, 3, K + 9
    asc = torch.stack([torch.randperm(nKb, generator=gen)[:K].sort().values for _ in range(B * G * n)])
    rank = torch.stack([torch.randperm(K, generator=gen) for _ in range(B * G * n)])
    asc, rank = asc.view(B, G, n, K).to(idx_dtype), rank.view(B, G, n, K).to(idx_dtype)
    count = torch.randint(0, K + 1, (B, Hq, n), generator=gen, dtype=torch.int32)
    want = topk_compact_naive(asc, rank, count)
    for r in range(want.shape[0] * Hq * n):  # the contract, row by row
        b, h, i = r // (Hq * n), (r // n) % Hq, r % n
        c, g = int(count[b, h, i]), h // (Hq // G)
        kept = sorted(int(a) for a, q in zip(asc[b, g, i], rank[b, g, i]) if q < c)
        assert want[b, h, i].tolist() == kept + [0] * (K - c)
    big = torch.full((B, Hq, n + 2, K), -7, dtype=torch.int32)
    got = topk_compact(asc, rank, count, out=big[:, :, 1 : n + 1], block=block)
    assert torch.equal(got, want) and torch.equal(big[:, :, 1 : n + 1], want)
    assert bool((big[:, :, 0] == -7).all()) and bool((big[:, :, -1] == -7).all())


# ------------------------------------------------------------------------------------------------
# memory


class PeakTracker(TorchDispatchMode):
    """Peak bytes of the storages alive at once, counting every tensor an op returns (views share their base's
    storage; a storage is released when the last tracked tensor on it is collected). Storages of ``inputs``
    (views of the scores, ...) are not counted. Work space inside one op (e.g. a sort's) is not seen."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.inputs = {t.untyped_storage().data_ptr() for t in inputs}
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, tracked tensors on it]
        self.now = self.peak = 0
        self.largest = 0
        self.tracked: dict[int, weakref.ref] = {}  # id -> tensor (tensors compare elementwise: no WeakSet)

    def _release(self, ptr: int, key: int) -> None:
        self.tracked.pop(key, None)
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            ref = self.tracked.get(id(t))
            if ref is not None and ref() is t:  # an in-place op returning its input
                continue
            st = t.untyped_storage()
            ptr, nbytes = st.data_ptr(), st.nbytes()
            if ptr in self.inputs:
                continue
            if ptr not in self.live:
                self.live[ptr] = [nbytes, 0]
                self.now += nbytes
                self.peak = max(self.peak, self.now)
                self.largest = max(self.largest, nbytes)
            self.live[ptr][1] += 1
            self.tracked[id(t)] = weakref.ref(t)
            weakref.finalize(t, self._release, ptr, id(t))
        return out


def measure(fn, inputs: list[torch.Tensor]) -> tuple[object, PeakTracker]:
    tracker = PeakTracker(inputs)
    with tracker:
        result = fn()
    return result, tracker


def test_topk_memory_bounded_by_chunk():
    """nQb = nKb = 2048, Hq = 32, max_k = 4: the layout is 1 MiB, the group sort alone is ~64 MiB at once in the
    old algorithm. With ``chunk_mb=1`` the new one stays within layout + chunk + O(B*nQb)."""
    B, Hq, G, bq = 1, 32, 1, 16
    N = 2048 * bq
    prob = make_problem(B, Hq, N, N, bq, bq, True, D=1)
    nQb, nKb = prob.nQb, prob.nKb
    gen = torch.Generator().manual_seed(0)
    scores = BlockScores(torch.rand(B, G, nQb, nKb, generator=gen))
    budget = Budget("count", torch.randint(1, 5, (B, Hq, nQb), generator=gen, dtype=torch.int32))
    chunk_mb = 1
    inputs = [scores.scores, budget.value, prob.q, prob.k]
    new, t_new = measure(lambda: TopKMask(chunk_mb=chunk_mb).build(prob, scores, budget), inputs)
    old, t_old = measure(lambda: old_topk(prob, scores, budget), inputs)
    assert_same(new, old)
    max_k = new.max_k
    assert max_k == 4
    layout_bytes = new.kv_indices.numel() * 4 + new.kv_counts.numel() * 4  # 1 MiB + 256 KiB
    step = topk_rows_per_chunk(B, Hq, G, nKb, max_k, 4, chunk_mb)
    assert 1 <= step < nQb  # several chunks
    small = 64 * B * Hq * nQb  # counts / bounds: a few int64 [B, Hq, nQb] tensors
    assert t_new.peak <= layout_bytes + (chunk_mb << 20) + small, (t_new.peak, t_old.peak)
    print(f"peak live bytes: new {t_new.peak}, old {t_old.peak}, layout {layout_bytes}")
    assert t_old.peak > 20 * t_new.peak  # the old peak is dominated by the unchunked [B, G, nQb, nKb] sort
    assert t_new.largest <= max(new.kv_indices.numel() * 4, chunk_mb << 20)


def test_topk_memory_formula_scales_with_layout():
    """By construction: each chunk's temporaries are at most ``chunk_mb`` (one q-block row at least), and the
    per-row estimate covers the per-head compaction (21 bytes per layout entry) and the group sort."""
    B, Hq, G, nKb, max_k = 1, 32, 1, 8192, 6300  # 1M tokens, Llama-3.1-8B shape
    step = topk_rows_per_chunk(B, Hq, G, nKb, max_k, 4, 1024)
    per_row = 6 * B * nKb + 28 * B * G * nKb + 32 * B * G * max_k + 21 * B * Hq * max_k
    assert step == (1024 << 20) // per_row and step * per_row <= 1024 << 20
    assert step >= 1 and math.ceil(8192 / step) <= 8192
    assert topk_rows_per_chunk(1, 32, 32, 10**6, 10**6, 4, 1) == 1  # never zero rows
