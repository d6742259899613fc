"""``dynamic``: ProxyAttn's block-aware dynamic budget from the last q-block's exact attention."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, Budget, Budgeter
from sparsekit.kernels.last_block_mass.naive import last_block_mass_naive
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
    ``"torch"`` (KV-head chunks bounded by ``step_mb``) or ``"triton"``. The rest is a handful of
    vectorized ops on ``[B, Hq, nKb]`` / ``[B, Hq, nQb]`` tensors, with no host synchronisation.
    """

    name: ClassVar[str] = "dynamic"
    description: ClassVar[str] = "ProxyAttn: per-head ratio from the last q-block's cumulative mass (gamma)"
    produces: ClassVar[str] = "count"  # type: ignore[assignment]

    gamma: float = attrs.field(default=0.95, validator=unit_fraction)
    min_budget: int = attrs.field(default=2048, validator=non_negative_int)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})
    impl: str = attrs.field(default="auto", validator=impl_choice, metadata={"tuning": True})

    def allocate(self, problem: AttentionProblem, scores: BlockScores | None) -> Budget:
        _, _, visible = problem.block_bounds()  # [B, nQb]
        n_last = visible[:, -1:]  # [B, 1]: blocks the last q-block sees
        if self.gamma >= 1.0:
            count = n_last.expand(problem.B, problem.Hq)
        else:
            mass = last_block_mass(problem, self.step_mb, self.impl)  # [B, Hq, nKb]
            csum = mass.sort(-1, descending=True).values.cumsum(-1)
            count = torch.minimum((csum < self.gamma).sum(-1) + 1, n_last)  # smallest count reaching gamma
        # Results written straight into float32 / int32 outputs (``out=``): no cast ops. The float32 quotient of
        # two integers below 2**24 is the float64 one rounded to float32 (both divisions round correctly).
        ratio = torch.div(count, n_last, out=count.new_empty(count.shape, dtype=torch.float32))  # [B, Hq]
        # ceil(r_h * visible_i) in exact integer arithmetic, then clamped to [min_blocks, visible_i]
        n = n_last[:, :, None]
        per_block = (count[:, :, None] * visible[:, None, :] + (n - 1)).div_(n, rounding_mode="floor")
        min_blocks = -(-self.min_budget // problem.block_k)
        per_block = torch.minimum(per_block.clamp_min_(min_blocks), visible[:, None, :],
                                  out=torch.empty_like(per_block, dtype=torch.int32))
        return Budget("count", per_block, {"ratio": ratio, "count_last": count.to(torch.int32)})
