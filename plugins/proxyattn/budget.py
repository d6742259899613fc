"""``dynamic``: ProxyAttn's block-aware dynamic budget from the last q-block's exact attention."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, Budget, Budgeter
from sparsekit.stages import non_negative_int, positive_int, unit_fraction


def last_block_mass(problem: AttentionProblem, step_mb: int = 256) -> Tensor:
    """float32 ``[B, Hq, nKb]``: exact softmax attention of the last ``block_q`` query rows (all rows if
    fewer) of every real head, averaged over those rows and summed per kv-block (each head sums to 1)."""
    B, Hq, Hkv, Nq, Nk, D = problem.B, problem.Hq, problem.Hkv, problem.Nq, problem.Nk, problem.D
    g, bk, nKb = problem.group_size, problem.block_k, problem.nKb
    m = min(problem.block_q, Nq)
    rows = torch.arange(Nq - m, Nq, device=problem.device)
    kpos = torch.arange(Nk, device=problem.device)
    ok = kpos[None, :] <= (Nk - Nq) + rows[:, None] if problem.causal else torch.ones(m, Nk, dtype=torch.bool,
                                                                                        device=problem.device)
    out = torch.empty(B, Hkv, g, nKb, dtype=torch.float32, device=problem.device)
    per_kv_head = B * g * m * Nk * 4 * 3
    step = max(1, (step_mb << 20) // per_kv_head)
    for h0 in range(0, Hkv, step):  # chunks of KV heads bound memory; every head of a chunk at once
        h1 = min(h0 + step, Hkv)
        q = problem.q[:, h0 * g : h1 * g, Nq - m :].float().view(B, h1 - h0, g, m, D)
        k = problem.k[:, h0:h1].float()
        s = torch.matmul(q, k[:, :, None].transpose(-1, -2)) * problem.softmax_scale  # [B, h, g, m, Nk]
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1).mean(3)  # [B, h, g, Nk]
        p = torch.nn.functional.pad(p, (0, nKb * bk - Nk))
        out[:, h0:h1] = p.view(B, h1 - h0, g, nKb, bk).sum(-1)
    return out.view(B, Hq, nKb)


@attrs.frozen
class DynamicBudget(Budgeter):
    """Per-head budgets from the last q-block.

    For every query head: sort the last block's per-kv-block attention mass, take the smallest count
    whose cumulative mass reaches ``gamma``, and set the head's ratio ``r_h = count / visible``. Each
    q-block ``i`` then keeps ``ceil(r_h * visible_i)`` blocks, at least ``ceil(min_budget / block_k)``
    and at most all visible blocks. ``gamma=1`` keeps everything (dense).
    """

    name: ClassVar[str] = "dynamic"
    description: ClassVar[str] = "ProxyAttn: per-head ratio from the last q-block's cumulative mass (gamma)"
    produces: ClassVar[str] = "count"  # type: ignore[assignment]

    gamma: float = attrs.field(default=0.95, validator=unit_fraction)
    min_budget: int = attrs.field(default=2048, validator=non_negative_int)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})

    def allocate(self, problem: AttentionProblem, scores: BlockScores | None) -> Budget:
        _, _, visible = problem.block_bounds()  # [B, nQb]
        n_last = visible[:, -1:]  # [B, 1]: blocks the last q-block sees
        if self.gamma >= 1.0:
            count = n_last.expand(problem.B, problem.Hq)
        else:
            mass = last_block_mass(problem, self.step_mb)  # [B, Hq, nKb]
            csum = mass.sort(-1, descending=True).values.cumsum(-1)
            count = (csum < self.gamma).sum(-1) + 1  # smallest count reaching gamma
            count = torch.minimum(count, n_last)
        ratio = count.double() / n_last.double()  # [B, Hq]
        # ceil(r_h * visible_i) in exact integer arithmetic
        per_block = (count[:, :, None] * visible[:, None, :] + n_last[:, :, None] - 1) // n_last[:, :, None]
        min_blocks = -(-self.min_budget // problem.block_k)
        per_block = torch.minimum(per_block.clamp_min(min_blocks), visible[:, None, :].expand_as(per_block))
        return Budget("count", per_block.to(torch.int32).contiguous(),
                      {"ratio": ratio.float(), "count_last": count.to(torch.int32)})
