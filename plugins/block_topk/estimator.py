"""``block_topk``: MInference-style block scores from mean-pooled q-blocks and k-blocks."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, ConfigError, Estimator

PER_CHOICES = ("head", "group")


def _per(inst: object, attr: attrs.Attribute, value: object) -> None:
    if value not in PER_CHOICES:
        raise ConfigError(f"per={value!r} is not allowed (allowed: {', '.join(map(repr, PER_CHOICES))}). "
                          "Fix: pass per='head' (one score row per query head) or per='group' (one per KV head)")


def mean_pool(x: Tensor, block: int) -> Tensor:
    """float32 ``[B, H, ceil(N / block), D]``: mean of each block's rows (a partial last block averages its own)."""
    B, H, N, D = x.shape
    nb = -(-N // block)
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, nb * block - N)).view(B, H, nb, block, D).sum(3)
    sizes = torch.clamp(N - torch.arange(nb, device=x.device) * block, max=block).float()  # [nb]
    return xp / sizes[:, None]


@attrs.frozen
class BlockTopKEstimator(Estimator):
    """Block scores ``softmax_j(mean(q-block i) . mean(k-block j) / sqrt(D))`` over the visible kv-blocks.

    ``per="head"``: every query head pools its own rows against its KV head (``G = Hq`` score groups);
    ``per="group"``: the pooled query is also averaged over the heads sharing a KV head (``G = Hkv``).
    Output float32 ``[B, G, nQb, nKb]``, each visible row sums to 1, ``-inf`` where a q-block cannot see.
    """

    name: ClassVar[str] = "block_topk"
    description: ClassVar[str] = "MInference block_sparse: mean-pooled q/k blocks, softmax over visible blocks"
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    per: str = attrs.field(default="head", validator=_per)

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        B, Hq, Hkv, g = problem.B, problem.Hq, problem.Hkv, problem.group_size
        qb = mean_pool(problem.q, problem.block_q)  # [B, Hq, nQb, D]
        kb = mean_pool(problem.k, problem.block_k)  # [B, Hkv, nKb, D]
        qb = qb.view(B, Hkv, g, problem.nQb, problem.D)
        if self.per == "group":
            qb = qb.mean(2, keepdim=True)  # [B, Hkv, 1, nQb, D]
        s = torch.matmul(qb, kb[:, :, None].transpose(-1, -2)) * problem.softmax_scale  # [B, Hkv, g|1, nQb, nKb]
        s = s.reshape(B, -1, problem.nQb, problem.nKb)
        vis = problem.visible_mask()[:, None]  # [B, 1, nQb, nKb]
        p = torch.softmax(s.masked_fill(~vis, float("-inf")), dim=-1)
        return BlockScores(p.masked_fill(~vis, float("-inf")).contiguous(), "mass", {"per": self.per})
