"""``fixed``: the same block count (or ratio of the visible blocks) for every head and q-block."""

from __future__ import annotations

from fractions import Fraction
from typing import ClassVar

import attrs
import torch

from sparsekit import AttentionProblem, BlockScores, Budget, Budgeter, ConfigError


def _blocks(inst: object, attr: attrs.Attribute, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"blocks={value!r} is not allowed (allowed: an integer >= 1 or None). Fix: e.g. blocks=16")


def _ratio(inst: object, attr: attrs.Attribute, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise ConfigError(f"ratio={value!r} is not allowed (allowed: a number in (0, 1] or None). Fix: e.g. ratio=0.1")


@attrs.frozen
class FixedBudget(Budgeter):
    """Keep ``blocks`` kv-blocks, or ``ceil(ratio * visible)`` of each q-block's visible blocks.

    Exactly one of ``blocks`` and ``ratio`` is set; ``ratio=1`` is the full (dense) budget.
    """

    name: ClassVar[str] = "fixed"
    description: ClassVar[str] = "fixed block count or ratio of the visible blocks"
    supports_varlen: ClassVar[bool] = True
    produces: ClassVar[str] = "count"  # type: ignore[assignment]
    reads_scores: ClassVar[bool] = False  # the pipeline may run it beside the estimator

    blocks: int | None = attrs.field(default=None, validator=_blocks)
    ratio: float | None = attrs.field(default=0.1, validator=_ratio)

    def __attrs_post_init__(self) -> None:
        if (self.blocks is None) == (self.ratio is None):
            raise ConfigError(f"fixed budget got blocks={self.blocks!r}, ratio={self.ratio!r} (allowed: exactly one "
                              "of them). Fix: e.g. budget='fixed(blocks=16,ratio=None)' or 'fixed(ratio=0.2)'")

    def allocate(self, problem: AttentionProblem, scores: BlockScores | None) -> Budget:
        _, _, visible = problem.block_bounds()  # [B, nQb]
        if self.blocks is not None:
            count = torch.minimum(visible, torch.full_like(visible, self.blocks))
        else:
            # ceil(visible * ratio) in exact integer arithmetic on the ratio's decimal value (0.28 * 25 = 7, not 8)
            frac = Fraction(str(self.ratio)).limit_denominator(1 << 20)
            count = (visible * frac.numerator + frac.denominator - 1) // frac.denominator
        count = count[:, None, :].expand(problem.B, problem.Hq, problem.nQb)
        return Budget("count", count.to(torch.int32).contiguous())
