"""``cumulative``: a per-row top-p ("mass") budget and the mask builder that spends it.

The budget says *which fraction* of each row's score mass to keep; the mask keeps, per (batch, head,
q-block), the smallest set of visible kv-blocks that holds the sink and diagonal blocks and reaches that
fraction of the row's normalized score mass. XAttention's threshold and FlexPrefill's ``gamma`` are both
this budget.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from sparsekit import (AttentionProblem, BlockLayout, BlockScores, Budget, Budgeter, ConfigError, MaskBuilder,
                       PluginError)
from sparsekit.stages import non_negative_int, unit_fraction

from .masks import TopKMask, forced_blocks


@attrs.frozen
class CumulativeBudget(Budgeter):
    """Keep the fraction ``gamma`` of each row's score mass (per-row top-p), ``gamma=1`` keeps everything.

    ``min_budget`` / ``max_budget`` (tokens, ``max_budget=0``: no maximum) bound the kept blocks of every
    row to ``[ceil(min_budget / block_k), ceil(max_budget / block_k)]``; they travel in ``Budget.info`` as
    ``min_blocks`` / ``max_blocks`` and the ``cumulative`` mask applies them.
    """

    name: ClassVar[str] = "cumulative"
    description: ClassVar[str] = "fraction gamma of each row's score mass (per-row top-p), token min/max bounds"
    supports_varlen: ClassVar[bool] = True
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    gamma: float = attrs.field(default=0.9, validator=unit_fraction)
    min_budget: int = attrs.field(default=0, validator=non_negative_int)
    max_budget: int = attrs.field(default=0, validator=non_negative_int)

    def __attrs_post_init__(self) -> None:
        if self.max_budget and self.max_budget < self.min_budget:
            raise ConfigError(f"max_budget={self.max_budget!r} is not allowed (allowed: 0 for no maximum, or an "
                              f"integer >= min_budget={self.min_budget}). Fix: pass max_budget=0 or raise it to at "
                              f"least {self.min_budget}")

    def allocate(self, problem: AttentionProblem, scores: BlockScores | None) -> Budget:
        value = torch.full((problem.B, problem.Hq, problem.nQb), float(self.gamma), dtype=torch.float32,
                           device=problem.device)
        bk = problem.block_k
        info = {"gamma": float(self.gamma), "min_blocks": -(-self.min_budget // bk),
                "max_blocks": -(-self.max_budget // bk) if self.max_budget else None}
        return Budget("mass", value, info)


@attrs.frozen
class CumulativeMask(MaskBuilder):
    """Per (batch, head, q-block): the smallest set of visible kv-blocks that contains the forced blocks (sink
    block 0, diagonal blocks) and whose normalized score mass reaches the budget's fraction.

    Scores of the visible blocks are normalized to sum 1 per row (non-finite or negative scores count as
    zero mass). Blocks are taken forced blocks first, then by descending score, ties to the lower index,
    until the cumulative mass reaches the fraction; ``Budget.info`` ``min_blocks`` / ``max_blocks`` then bound
    the count (forced blocks always stay). A fraction >= 1, or a row without mass, keeps every visible block.
    Heads of one score group share one sort.
    """

    name: ClassVar[str] = "cumulative"
    description: ClassVar[str] = "smallest set of blocks reaching a fraction of each row's score mass (top-p)"
    supports_varlen: ClassVar[bool] = True
    accepts_scores: ClassVar[frozenset[str]] = frozenset({"mass"})
    accepts_budgets: ClassVar[frozenset[str]] = frozenset({"mass"})

    sink: bool = True
    diagonal: bool = True

    def build(self, problem: AttentionProblem, scores: BlockScores | None, budget: Budget | None) -> BlockLayout:
        assert scores is not None and budget is not None  # guaranteed by build()'s composition check
        B, Hq, nQb, nKb = problem.B, problem.Hq, problem.nQb, problem.nKb
        G = scores.groups
        dev = problem.device
        if Hq % G:
            raise PluginError(f"BlockScores has G={G} groups, which does not divide Hq={Hq} (allowed: divisors of "
                              f"Hq). Fix: the estimator must return one score group per Hq // G query heads")
        _, _, visible = problem.block_bounds()  # [B, nQb]
        forced = forced_blocks(problem, self.sink, self.diagonal)  # [B, nQb, nKb]
        vis = torch.arange(nKb, device=dev)[None, None, :] < visible[:, :, None]

        # normalized mass of the visible blocks, per score group: [B, G, nQb, nKb]
        s = scores.scores.float()
        mass = torch.where(torch.isfinite(s), s, 0.0).clamp_min(0.0).masked_fill(~vis[:, None], 0.0)
        total = mass.sum(-1, keepdim=True)
        norm = torch.where(total > 0, mass / total.clamp_min(torch.finfo(torch.float32).tiny), 0.0)

        # one stable sort per group: forced first, then by mass (ties -> lower index), invisible last
        key = norm.masked_fill(~vis[:, None], float("-inf")).masked_fill(forced[:, None], float("inf"))
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # [B, G, nQb, nKb]
        taken = norm.gather(-1, order).cumsum(-1)
        before = torch.nn.functional.pad(taken[..., :-1], (1, 0))  # mass of the blocks ranked ahead

        # per head: count = blocks whose preceding mass is still below the fraction
        frac = budget.value.float().view(B, G, Hq // G, nQb, 1)
        count = (before[:, :, None] < frac).sum(-1).view(B, Hq, nQb)
        no_mass = (total[..., 0] <= 0)[:, :, None].expand(B, G, Hq // G, nQb).reshape(B, Hq, nQb)
        full = (frac.view(B, Hq, nQb) >= 1.0) | no_mass
        vis_n = visible[:, None, :].expand(B, Hq, nQb)
        count = torch.where(full, vis_n, count)
        lo, hi = budget.info.get("min_blocks", 0) or 0, budget.info.get("max_blocks")
        count = count.clamp_min(int(lo))
        if hi is not None:
            count = count.clamp_max(int(hi))
        count = torch.minimum(count, vis_n)
        count = torch.maximum(count, forced.sum(-1)[:, None, :])  # [B, Hq, nQb]

        # the kept blocks are the first `count` of the group order above: exactly what `topk` selects from the
        # normalized mass with these counts (same forced/invisible/tie rules), in O(layout) memory
        return TopKMask(sink=self.sink, diagonal=self.diagonal).build(
            problem, BlockScores(norm, "mass"), Budget("count", count.to(torch.int32).contiguous()))
