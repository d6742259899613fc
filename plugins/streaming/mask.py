"""``streaming``: the A-shape layout (attention sinks + a local window), no scores, no budget."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from sparsekit import AttentionProblem, BlockLayout, BlockScores, Budget, MaskBuilder
from sparsekit.stages import non_negative_int, positive_int


@attrs.frozen
class StreamingMask(MaskBuilder):
    """Keep the first ``sink_blocks`` kv-blocks and the ``local_blocks`` kv-blocks ending at the diagonal.

    For q-block ``i`` with diagonal blocks ``first..last`` (the kv-blocks holding its rows' positions,
    bottom-right aligned) the window is ``[min(first, last - local_blocks + 1), last]`` (clamped at 0): it
    always covers every diagonal block, so each row sees itself. The sinks are ``[0, sink_blocks)`` cut to
    the visible blocks (only without causality can some lie past the window). Indices are ascending and
    distinct, the same for every head.
    """

    name: ClassVar[str] = "streaming"
    description: ClassVar[str] = "A-shape / StreamingLLM: sink blocks + local window ending at the diagonal"
    supports_varlen: ClassVar[bool] = True
    needs_scores: ClassVar[bool] = False
    needs_budget: ClassVar[bool] = False
    accepts_budgets: ClassVar[frozenset[str]] = frozenset()

    sink_blocks: int = attrs.field(default=1, validator=non_negative_int)
    local_blocks: int = attrs.field(default=8, validator=positive_int)

    def build(self, problem: AttentionProblem, scores: BlockScores | None, budget: Budget | None) -> BlockLayout:
        first, last, visible = problem.block_bounds()  # int64 [B, nQb]
        empty = visible == 0  # q-blocks made only of padding rows
        first, last = first.clamp_min(0), last.clamp_min(0)  # non-causal Nq > Nk: rows before key 0 end at block 0
        lo = torch.minimum(first, last - self.local_blocks + 1).clamp_min(0)  # window [lo, last]
        n_sink = torch.clamp(visible, max=self.sink_blocks)  # sinks [0, n_sink)
        before = torch.minimum(n_sink, lo)  # sinks before the window
        width = last - lo + 1
        after = (n_sink - last - 1).clamp_min(0)  # sinks past the window (non-causal only): [last + 1, n_sink)
        count = torch.where(empty, 0, before + width + after)  # [B, nQb]
        max_k = int(count.max()) if count.numel() else 0  # host sync: max_k sizes the layout
        slot = torch.arange(max_k, device=problem.device)[None, None, :]
        b_, w_, lo_, last_ = before[..., None], width[..., None], lo[..., None], last[..., None]
        idx = torch.where(slot < b_, slot, torch.where(slot < b_ + w_, lo_ + slot - b_, last_ + 1 + slot - b_ - w_))
        idx = torch.where(slot < count[..., None], idx, 0)  # [B, nQb, max_k]
        shape = (problem.B, problem.Hq, problem.nQb)
        counts = count[:, None].expand(shape).to(torch.int32).contiguous()
        idx = idx[:, None].expand(shape + (max_k,)).to(torch.int32).contiguous()
        return BlockLayout.for_problem(problem, counts, idx)
