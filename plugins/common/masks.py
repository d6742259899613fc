"""``topk``: per head and q-block, the top-``k`` kv-blocks by the group's scores."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from sparsekit import AttentionProblem, BlockLayout, BlockScores, Budget, MaskBuilder


def forced_blocks(problem: AttentionProblem, sink: bool, diagonal: bool) -> torch.Tensor:
    """Bool ``[B, nQb, nKb]``: blocks always kept — the sink block 0 and the diagonal blocks (those
    holding the q-block's own positions: one when blocks align, two when chunked prefill offsets them)."""
    first, last, visible = problem.block_bounds()
    j = torch.arange(problem.nKb, device=problem.device)[None, None, :]
    vis = j < visible[:, :, None]
    forced = torch.zeros_like(vis)
    if sink:
        forced |= j == 0
    if diagonal:
        forced |= (j >= first[:, :, None]) & (j <= last[:, :, None])
    return forced & vis


@attrs.frozen
class TopKMask(MaskBuilder):
    """Keep, per (batch, head, q-block), the ``count`` highest-scoring visible kv-blocks.

    The sink block and the diagonal blocks are always kept (the count grows to fit them if needed).
    Ties go to the lower block index; NaN scores rank lowest. Heads of one score group share one sort.
    """

    name: ClassVar[str] = "topk"
    description: ClassVar[str] = "top-k blocks per head and q-block by score; sink and diagonal always kept"
    supports_varlen: ClassVar[bool] = True
    accepts_budgets: ClassVar[frozenset[str]] = frozenset({"count"})

    sink: bool = True
    diagonal: bool = True

    def build(self, problem: AttentionProblem, scores: BlockScores | None, budget: Budget | None) -> BlockLayout:
        assert scores is not None and budget is not None  # guaranteed by build()'s composition check
        B, Hq, nQb, nKb = problem.B, problem.Hq, problem.nQb, problem.nKb
        G = scores.groups
        _, _, visible = problem.block_bounds()  # [B, nQb]
        forced = forced_blocks(problem, self.sink, self.diagonal)  # [B, nQb, nKb]
        vis = torch.arange(nKb, device=problem.device)[None, None, :] < visible[:, :, None]

        count = torch.minimum(budget.value.long(), visible[:, None, :])
        count = torch.maximum(count, forced.sum(-1)[:, None, :])  # [B, Hq, nQb]
        max_k = int(count.max()) if count.numel() else 0  # host sync: max_k sizes the layout
        if max_k == 0:
            empty = torch.zeros(B, Hq, nQb, 0, dtype=torch.int32, device=problem.device)
            return BlockLayout.for_problem(problem, count.to(torch.int32), empty)

        # one stable sort per score group: forced blocks first, invisible last, ties to the lower index
        key = torch.nan_to_num(scores.scores, nan=float("-inf"))
        key = key.masked_fill(~vis[:, None], float("-inf")).masked_fill(forced[:, None], float("inf"))
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :max_k]  # [B, G, nQb, max_k]
        order = order[:, :, None].expand(B, G, Hq // G, nQb, max_k).reshape(B, Hq, nQb, max_k)
        keep = torch.arange(max_k, device=problem.device) < count[..., None]
        idx = torch.where(keep, order, nKb).sort(-1).values
        idx = torch.where(idx == nKb, 0, idx).to(torch.int32).contiguous()
        return BlockLayout.for_problem(problem, count.to(torch.int32).contiguous(), idx)
