"""``topk``: per head and q-block, the top-``k`` kv-blocks by the group's scores."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockLayout, BlockScores, Budget, MaskBuilder
from sparsekit.errors import ConfigError, invalid
from sparsekit.kernels._checks import triton_installed
from sparsekit.kernels.topk_compact.naive import topk_compact_naive
from sparsekit.kernels.topk_rank.naive import forced_count
from sparsekit.stages import positive_int

IMPLS = ("auto", "torch", "triton")

#: Most kv-blocks for which the Triton path ranks with ``kernels/topk_rank`` (one in-register sort per row); above,
#: it sorts with torch and compacts with ``kernels/topk_compact``. Measured on an H200 with the Llama-3.1-8B shape
#: (``benchmarks/probes/topk_paths.py``, ``topk_paths_h200_2026-12-03.json``): rank kernels 0.100 / 0.219 ms vs
#: 0.432 / 0.428 ms at 256 / 1024 kv-blocks (32K / 128K tokens), but 0.722 / 15.2 ms vs 0.542 / 8.77 ms at
#: 2048 / 8192 (256K / 1M), where the per-row bitonic sort costs more than torch's segmented sort.
RANK_MAX_BLOCKS = 1024

__all__ = ["TopKMask", "forced_blocks", "forced_count", "topk_rank_rows_per_chunk", "topk_rows_per_chunk"]


def _impl_choice(inst: object, attr: attrs.Attribute, value: object) -> None:
    if value not in IMPLS:
        raise invalid(attr.name, value, f"one of {', '.join(map(repr, IMPLS))}", "pass impl='auto'", ConfigError)


def forced_blocks(problem: AttentionProblem, sink: bool, diagonal: bool) -> torch.Tensor:
    """Bool ``[B, nQb, nKb]``: blocks always kept — the sink block 0 and the diagonal blocks (those
    holding the q-block's own positions: one when blocks align, two when chunked prefill offsets them)."""
    first, last, visible = problem.block_bounds()
    j = torch.arange(problem.nKb, device=problem.device)
    vis = j < visible[:, :, None]
    forced = torch.zeros_like(vis)
    if diagonal:
        forced = (j >= first[:, :, None]) & (j <= last[:, :, None])
    if sink:
        forced = forced | (j == 0)
    return forced & vis


def topk_rows_per_chunk(B: int, Hq: int, G: int, nKb: int, max_k: int, score_bytes: int, chunk_mb: int,
                        head_bytes: int = 21) -> int:
    """q-block rows :meth:`TopKMask.build` processes at once so that its temporaries stay within ``chunk_mb``
    MiB (at least one row). Bytes per q-block row, an upper estimate of what is live at once:

    * bounds: ``~6 * B*nKb`` (visible / forced bool masks and their comparisons);
    * group sort: ``(3*s + 16) * B*G*nKb`` (float key of ``s`` bytes, sorted values, int64 order, workspace);
    * group candidates: ``32 * B*G*max_k`` (int64 order prefix, sorted block ids and ranks; the torch compaction's
      int32 copy of the ids);
    * per head: ``head_bytes * B*Hq*max_k``: 21 for the torch compaction (bool flags, int32 cumsum and padding
      slots, int64 scatter index, int32 values), 0 for the Triton kernel (it writes the layout directly).
    """
    per_row = (6 * B * nKb + (3 * score_bytes + 16) * B * G * nKb + 32 * B * G * max_k
               + head_bytes * B * Hq * max_k)
    return max(1, (chunk_mb << 20) // max(per_row, 1))


def topk_rank_rows_per_chunk(B: int, G: int, nKb: int, chunk_mb: int) -> int:
    """q-block rows the Triton path of :meth:`TopKMask.build` ranks at once: its one temporary, the int32 rank
    tensor ``[B, G, rows, nKb]`` (``4 * B*G*nKb`` bytes per row), stays within ``chunk_mb`` MiB (one row at least)."""
    return max(1, (chunk_mb << 20) // max(4 * B * G * nKb, 1))


@attrs.frozen
class TopKMask(MaskBuilder):
    """Keep, per (batch, head, q-block), the ``count`` highest-scoring visible kv-blocks.

    The sink block and the diagonal blocks are always kept (the count grows to fit them if needed).
    Ties go to the lower block index; NaN scores rank lowest. Heads of one score group share one sort.

    Tuning knobs (results do not depend on them): ``chunk_mb``: the q-block rows are processed in chunks whose
    temporaries stay within about ``chunk_mb`` MiB, so the stage needs the layout itself plus that. ``impl``:

    * ``"triton"`` (``"auto"`` on CUDA): two Triton launches, ``sparsekit.kernels.topk_rank``. Launch A, per
      (sequence, group, q-block): the heads' counts, their maximum (one ``atomic_max`` into a 4-byte device
      buffer) and every block's rank in the group's order (one ``tl.sort`` of packed int64 keys); launch B, per
      (sequence, head, q-block): the blocks ranked below the count, ascending, then 0 padding, straight into the
      layout. Its one temporary is the int32 rank tensor ``[B, G, nQb, nKb]``; when that exceeds ``chunk_mb``,
      launch A first computes the counts and maximum of all rows, then each chunk of rows runs launch A (ranks
      only) and launch B. Up to ``RANK_MAX_BLOCKS`` kv-blocks (1024: 128K tokens at 128-token blocks, where it was
      measured faster); above, or for inputs the kernel refuses, torch sorts per group and the ``topk_compact``
      Triton kernel compacts per head.
    * ``"torch"`` (``"auto"`` elsewhere; the reference): torch sorts per group, then the per-head compaction in
      plain torch (``topk_compact_naive``).

    One host synchronisation: ``max_k = count.max()`` sizes the layout (it depends on the budget's data); on the
    Triton path it reads the 4-byte maximum, queued after launch A (ranks included when they fit one chunk). On
    the torch path the group sort is queued before it when it fits in one chunk at any ``max_k``.
    """

    name: ClassVar[str] = "topk"
    description: ClassVar[str] = "top-k blocks per head and q-block by score; sink and diagonal always kept"
    supports_varlen: ClassVar[bool] = True
    accepts_budgets: ClassVar[frozenset[str]] = frozenset({"count"})

    sink: bool = True
    diagonal: bool = True
    chunk_mb: int = attrs.field(default=1024, validator=positive_int, metadata={"tuning": True})
    impl: str = attrs.field(default="auto", validator=_impl_choice, metadata={"tuning": True})

    def build(self, problem: AttentionProblem, scores: BlockScores | None, budget: Budget | None) -> BlockLayout:
        assert scores is not None and budget is not None  # guaranteed by build()'s composition check
        B, Hq, nQb, nKb = problem.B, problem.Hq, problem.nQb, problem.nKb
        G = scores.groups
        dev = problem.device
        first, last, visible = problem.block_bounds()  # [B, nQb]
        use_triton = self.impl == "triton" or (self.impl == "auto" and dev.type == "cuda" and triton_installed())
        if use_triton and nKb <= RANK_MAX_BLOCKS and not _rank_reasons(scores.scores, first, last, visible,
                                                                       budget.value):
            return self._build_ranked(problem, scores.scores, budget.value, first, last, visible)
        j = torch.arange(nKb, device=dev)

        # the layout's counts: the budget clamped to [forced, visible] (forced <= visible), written as int32
        forced = forced_count(first, last, visible, self.sink, self.diagonal)
        counts32 = torch.clamp(budget.value, forced[:, None, :], visible[:, None, :],
                               out=torch.empty(B, Hq, nQb, dtype=torch.int32, device=dev))
        head_bytes = 0 if use_triton else 21
        s_bytes = scores.scores.element_size()
        # The group sort does not depend on max_k: when one chunk holds every row even at max_k = nKb (the most
        # it can be), it is queued before the host sync, so that on CUDA it overlaps the wait for max_k.
        whole = topk_rows_per_chunk(B, Hq, G, nKb, nKb, s_bytes, self.chunk_mb, head_bytes) >= nQb
        order = self._group_order(scores.scores, first, last, visible, j) if whole else None

        max_k = int(counts32.max()) if counts32.numel() else 0  # the one host sync: max_k sizes the layout
        if max_k == 0:
            empty = torch.zeros(B, Hq, nQb, 0, dtype=torch.int32, device=dev)
            return BlockLayout.for_problem(problem, counts32, empty)

        # Exactness (vs. sorting every head's top-count blocks): heads of group g share the group's stable
        # descending order; head h keeps the first count[h] entries of it, i.e. the candidates (the group's
        # first max_k blocks) whose rank in the order is < count[h]. Sorting the candidates by block index once
        # per group gives (asc, rank); a stable compaction of asc by the flag rank < count[h] is then head h's
        # kept blocks in ascending order. Non-kept candidates are scattered, as 0, to the padding slots
        # count[h].. max_k-1 in order, so every slot is written exactly once (a permutation, no memset).
        out = torch.empty(B, Hq, nQb, max_k, dtype=torch.int32, device=dev)
        if use_triton:
            from sparsekit.kernels.topk_compact import topk_compact
        else:
            topk_compact = topk_compact_naive
        step = nQb if whole else topk_rows_per_chunk(B, Hq, G, nKb, max_k, s_bytes, self.chunk_mb, head_bytes)
        for i0 in range(0, nQb, step):
            i1 = min(i0 + step, nQb)
            if not whole:
                order = self._group_order(scores.scores[:, :, i0:i1], first[:, i0:i1], last[:, i0:i1],
                                          visible[:, i0:i1], j)
            asc, rank = order[..., :max_k].sort(-1)  # candidates by block index, and their rank in the group order
            order = None
            topk_compact(asc, rank, counts32[:, :, i0:i1], out=out[:, :, i0:i1])  # int64 asc/rank: no casts
            del asc, rank
        return BlockLayout.for_problem(problem, counts32, out)

    def _build_ranked(self, problem: AttentionProblem, scores: Tensor, budget: Tensor, first: Tensor, last: Tensor,
                      visible: Tensor) -> BlockLayout:
        """The Triton path: two launches (launch A per chunk too when the rank tensor exceeds ``chunk_mb``), on
        inputs ``_rank_reasons`` accepted; ``first``, ``last``, ``visible``: the problem's block bounds."""
        from sparsekit.kernels.topk_rank import op

        B, Hq, nQb, nKb = problem.B, problem.Hq, problem.nQb, problem.nKb
        step = topk_rank_rows_per_chunk(B, scores.shape[1], nKb, self.chunk_mb)
        whole = step >= nQb
        # launch A: the counts of every row, their maximum, and the ranks when all rows fit one chunk
        rank, counts32, max_buf = op.topk_rank(scores, first, last, visible, self.sink, self.diagonal, budget,
                                               ranks=whole, checked=True)
        max_k = int(max_buf)  # the one host sync: a 4-byte read; max_k sizes the layout
        if max_k == 0:
            empty = torch.zeros(B, Hq, nQb, 0, dtype=torch.int32, device=problem.device)
            return BlockLayout.for_problem(problem, counts32, empty)
        out = torch.empty(B, Hq, nQb, max_k, dtype=torch.int32, device=problem.device)
        if whole:
            op.topk_select(rank, counts32, visible, out)  # launch B: every slot of the layout written once
        else:
            for i0 in range(0, nQb, step):
                rows = slice(i0, min(i0 + step, nQb))
                rank, _, _ = op.topk_rank(scores[:, :, rows], first[:, rows], last[:, rows], visible[:, rows],
                                          self.sink, self.diagonal, checked=True)
                op.topk_select(rank, counts32[:, :, rows], visible[:, rows], out[:, :, rows])
                del rank  # at most one chunk's ranks alive
        return BlockLayout.for_problem(problem, counts32, out)

    def _group_order(self, scores: Tensor, first: Tensor, last: Tensor, visible: Tensor, j: Tensor) -> Tensor:
        """int64 ``[B, G, n, nKb]``: one stable descending sort per score group of the q-block rows of ``scores``
        ``[B, G, n, nKb]``: forced blocks first, invisible blocks last, NaN scores as ``-inf``, ties to the lower
        block index."""
        key = torch.nan_to_num(scores, nan=float("-inf"))
        if self.diagonal:
            key.masked_fill_(((j >= first[:, :, None]) & (j <= last[:, :, None]))[:, None], float("inf"))
        if self.sink:
            key.select(-1, 0).fill_(float("inf"))
        key.masked_fill_((j >= visible[:, :, None])[:, None], float("-inf"))  # last: invisible beats forced
        return torch.sort(key, dim=-1, descending=True, stable=True).indices


def _rank_reasons(scores: Tensor, first: Tensor, last: Tensor, visible: Tensor, budget: Tensor) -> list[str]:
    """Why the ``topk_rank`` kernels cannot build this layout (empty: they can)."""
    if not triton_installed():
        return ["triton is not installed"]
    from sparsekit.kernels.topk_rank import op

    return op.not_supported_reasons(scores, first, last, visible, budget)
