"""Dense attention as a strategy: the ``dense`` mask keeps every visible block."""

from __future__ import annotations

from typing import Callable, ClassVar

import attrs

from sparsekit import AttentionProblem, BlockLayout, BlockScores, Budget, MaskBuilder
from sparsekit.hookspecs import hookimpl


@attrs.frozen
class DenseMask(MaskBuilder):
    """Every visible (causal, valid) block: the layout of dense attention. Needs no scores or budget."""

    name: ClassVar[str] = "dense"
    description: ClassVar[str] = "all visible blocks (dense attention through the block-sparse path)"
    supports_varlen: ClassVar[bool] = True
    needs_scores: ClassVar[bool] = False
    needs_budget: ClassVar[bool] = False
    accepts_budgets: ClassVar[frozenset[str]] = frozenset()

    def build(self, problem: AttentionProblem, scores: BlockScores | None, budget: Budget | None) -> BlockLayout:
        return BlockLayout.full(problem)


@hookimpl
def sparsekit_register_masks(register: Callable[[type], None]) -> None:
    register(DenseMask)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("dense", {"estimator": None, "budget": None, "mask": {"name": "dense"}, "kernel": {"name": "auto"}},
             description="dense causal attention through the block-sparse kernels (exactness baseline)")
