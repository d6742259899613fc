"""``keynorm``: a query-independent "heavy key" block estimator."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from sparsekit import AttentionProblem, BlockScores, Estimator, InputError
from sparsekit.stages import positive_int


@attrs.frozen
class KeyNormEstimator(Estimator):
    """Score kv-block ``j`` by the largest L2 norm of the group-mean keys inside it, for every q-block.

    The ``Hq`` query heads are split into ``g`` groups aligned with the KV groups (``g`` divides ``Hkv``);
    a group's key at position ``t`` is the mean of its ``Hkv // g`` KV heads. Keys with large norms tend
    to attract attention whatever the query, so the score ignores ``q`` entirely: every visible q-block
    of a group ranks the kv-blocks the same way. Output float32 ``[B, g, nQb, nKb]`` of kind ``"rank"``
    (norms are not probability mass); blocks a q-block cannot see are ``-inf``. Cost: one pass over ``k``.
    """

    name: ClassVar[str] = "keynorm"
    description: ClassVar[str] = "heavy keys: max L2 norm of the group-mean keys per kv-block (query-independent)"
    produces: ClassVar[str] = "rank"  # type: ignore[assignment]
    supports_varlen: ClassVar[bool] = True  # keys past k_lens are masked below

    g: int = attrs.field(default=1, validator=positive_int)

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        B, Hkv, Nk, D = problem.B, problem.Hkv, problem.Nk, problem.D
        G, bk, nKb = self.g, problem.block_k, problem.nKb
        if Hkv % G:
            divisors = [d for d in range(1, Hkv + 1) if Hkv % d == 0]
            raise InputError(f"g={G} does not divide the {Hkv} KV heads (allowed: {divisors}). "
                             f"Fix: build with estimator='keynorm(g={max(d for d in divisors if d <= G)})'")
        kg = problem.k.float().view(B, G, Hkv // G, Nk, D).mean(2)  # group-mean keys [B, G, Nk, D]
        norms = torch.linalg.vector_norm(kg, dim=-1)  # [B, G, Nk]
        _, k_lens = problem.lens()  # [B]
        valid = torch.arange(Nk, device=problem.device)[None, :] < k_lens[:, None]  # [B, Nk]
        norms = norms.masked_fill(~valid[:, None], float("-inf"))
        norms = torch.nn.functional.pad(norms, (0, nKb * bk - Nk), value=float("-inf"))
        per_block = norms.view(B, G, nKb, bk).amax(-1)  # [B, G, nKb]
        vis = problem.visible_mask()  # [B, nQb, nKb]
        scores = torch.where(vis[:, None], per_block[:, :, None, :], float("-inf"))  # [B, G, nQb, nKb]
        return BlockScores(scores.contiguous(), "rank", {"g": G})
