"""``dynamic``: ProxyAttn's block-aware dynamic budget from the last q-block's exact attention."""

from __future__ import annotations

from typing import ClassVar

import attrs
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, Budget, Budgeter
from sparsekit.kernels.last_block_mass.naive import last_block_mass_naive
from sparsekit.kernels.mass_budget.naive import budget_from_count, mass_budget_naive
from sparsekit.stages import non_negative_int, positive_int, unit_fraction

from .estimator import choose_impl, impl_choice


def last_block_mass(problem: AttentionProblem, step_mb: int = 256, impl: str = "torch") -> Tensor:
    """float32 ``[B, Hq, nKb]``: exact softmax attention of the last ``block_q`` query rows (all rows if
    fewer) of every real head, averaged over those rows and summed per kv-block (each head sums to 1).

    ``impl="torch"``: plain torch in chunks of KV heads bounded by ``step_mb``; ``"triton"``: the Triton
    kernels (no loop, nothing token-level stored); ``"auto"``: Triton on CUDA when it can run the problem.
    """
    kw = dict(block_q=problem.block_q, block_k=problem.block_k, causal=problem.causal, scale=problem.softmax_scale)
    if choose_impl(impl, problem, lambda: f"dynamic(impl={impl!r})", lambda: _kernel_reasons(problem)) == "triton":
        from sparsekit.kernels.last_block_mass import op

        return op.last_block_mass(problem.q, problem.k, checked=True, **kw)
    return last_block_mass_naive(problem.q, problem.k, step_mb=step_mb, **kw)


def _kernel_reasons(problem: AttentionProblem) -> list[str]:
    from sparsekit.kernels.last_block_mass import op

    return op.not_supported_reasons(problem.q, problem.k, block_q=problem.block_q, block_k=problem.block_k)


@attrs.frozen
class DynamicBudget(Budgeter):
    """Per-head budgets from the last q-block.

    For every query head: sort the last block's per-kv-block attention mass, take the smallest count
    whose cumulative mass reaches ``gamma``, and set the head's ratio ``r_h = count / visible``. Each
    q-block ``i`` then keeps ``ceil(r_h * visible_i)`` blocks, at least ``ceil(min_budget / block_k)``
    and at most all visible blocks. ``gamma=1`` keeps everything (dense).

    ``impl``: how the last block's mass is computed: ``"auto"`` (Triton on CUDA, torch elsewhere),
    ``"torch"`` (KV-head chunks bounded by ``step_mb``) or ``"triton"``. The rest (sort, running sum, count,
    per-q-block counts) runs, with the Triton mass, as one Triton launch (``sparsekit.kernels.mass_budget``,
    up to ``MAX_BLOCKS`` kv-blocks), else as a handful of vectorized torch ops on ``[B, Hq, nKb]`` /
    ``[B, Hq, nQb]`` tensors; no host synchronisation either way.
    """

    name: ClassVar[str] = "dynamic"
    description: ClassVar[str] = "ProxyAttn: per-head ratio from the last q-block's cumulative mass (gamma)"
    produces: ClassVar[str] = "count"  # type: ignore[assignment]
    reads_scores: ClassVar[bool] = False  # the pipeline may run it beside the estimator

    gamma: float = attrs.field(default=0.95, validator=unit_fraction)
    min_budget: int = attrs.field(default=2048, validator=non_negative_int)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})
    impl: str = attrs.field(default="auto", validator=impl_choice, metadata={"tuning": True})

    def allocate(self, problem: AttentionProblem, scores: BlockScores | None) -> Budget:
        _, _, visible = problem.block_bounds()  # [B, nQb]
        min_blocks = -(-self.min_budget // problem.block_k)
        if self.gamma >= 1.0:
            per_block, ratio, count = budget_from_count(visible[:, -1:].expand(problem.B, problem.Hq), visible,
                                                        min_blocks)
        else:
            mass = last_block_mass(problem, self.step_mb, self.impl)  # [B, Hq, nKb] float32
            kernel = self.impl == "triton" or (self.impl == "auto" and mass.is_cuda)
            if kernel and not _mass_budget_reasons(mass, visible):
                from sparsekit.kernels.mass_budget import op

                per_block, ratio, count = op.mass_budget(mass, visible, self.gamma, min_blocks)  # one launch
            else:
                per_block, ratio, count = mass_budget_naive(mass, visible, self.gamma, min_blocks)
        return Budget("count", per_block, {"ratio": ratio, "count_last": count})


def _mass_budget_reasons(mass: Tensor, visible: Tensor) -> list[str]:
    from sparsekit.kernels._checks import triton_installed

    if not triton_installed():
        return ["triton is not installed"]
    from sparsekit.kernels.mass_budget import op

    return op.not_supported_reasons(mass, visible)
