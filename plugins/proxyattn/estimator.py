"""``proxy``: ProxyAttn's block scores from one proxy head per group (arXiv 2509.24745)."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, Estimator, InputError
from sparsekit.stages import positive_int


def sampled_rows(Nq: int, block_q: int, stride: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Rows sampled in each q-block: every ``stride``-th row counted back from the block's last row.

    Returns ``rows`` int64 ``[nQb, S]`` (clamped into range) and ``valid`` bool ``[nQb, S]``,
    ``S = ceil(block_q / stride)``.
    """
    nQb = math.ceil(Nq / block_q)
    S = math.ceil(block_q / stride)
    start = torch.arange(nQb, device=device) * block_q
    last = torch.clamp(start + block_q, max=Nq) - 1
    rows = last[:, None] - torch.arange(S, device=device)[None, :] * stride
    valid = rows >= start[:, None]
    return rows.clamp_min(0), valid


@attrs.frozen
class ProxyEstimator(Estimator):
    """Block scores from proxy heads.

    The ``Hq`` query heads are split into ``g`` groups aligned with the KV groups (``g`` divides
    ``Hkv``). Proxy query = mean of the group's query heads; proxy key = mean of its KV heads. For
    every ``stride``-th query row of each q-block (counted back from its last row, which is always
    kept) the causal softmax over all keys is computed exactly (scale ``1/sqrt(D)``), then max-pooled
    over the sampled rows of the q-block and the keys of each kv-block. Output ``[B, g, nQb, nKb]``;
    blocks a q-block cannot see are ``-inf``. Memory per step is bounded by ``step_mb``.
    """

    name: ClassVar[str] = "proxy"
    description: ClassVar[str] = "ProxyAttn: pooled proxy head per group, strided rows, max-pooled softmax"
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    g: int = attrs.field(default=1, validator=positive_int)
    stride: int = attrs.field(default=4, validator=positive_int)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        B, Hq, Hkv, Nq, Nk, D = problem.B, problem.Hq, problem.Hkv, problem.Nq, problem.Nk, problem.D
        G, bq, bk = self.g, problem.block_q, problem.block_k
        if Hkv % G:
            divisors = [d for d in range(1, Hkv + 1) if Hkv % d == 0]
            raise InputError(f"g={G} does not divide the {Hkv} KV heads (allowed: {divisors}). "
                             f"Fix: build with estimator='proxy(g={max(d for d in divisors if d <= G)})'")
        nQb, nKb = problem.nQb, problem.nKb
        qp = problem.q.float().view(B, G, Hq // G, Nq, D).mean(2)  # [B, G, Nq, D]
        kp = problem.k.float().view(B, G, Hkv // G, Nk, D).mean(2)  # [B, G, Nk, D]
        rows, valid = sampled_rows(Nq, bq, self.stride, problem.device)  # [nQb, S]
        S = rows.shape[1]
        pad = nKb * bk - Nk
        kpos = torch.arange(Nk, device=problem.device)
        offset = Nk - Nq
        out = torch.empty(B, G, nQb, nKb, dtype=torch.float32, device=problem.device)
        per_block = B * G * S * (Nk + pad) * 4 * 3  # bytes of one q-block's scores, probs and pooling
        step = max(1, (self.step_mb << 20) // per_block)
        for i0 in range(0, nQb, step):
            i1 = min(i0 + step, nQb)
            r, ok_row = rows[i0:i1], valid[i0:i1]  # [c, S]
            qs = qp[:, :, r]  # [B, G, c, S, D]
            s = torch.matmul(qs, kp[:, :, None].transpose(-1, -2)) * problem.softmax_scale  # [B, G, c, S, Nk]
            ok = ok_row[..., None] & (kpos <= offset + r[..., None] if problem.causal else torch.ones_like(kpos, dtype=torch.bool))
            p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1).masked_fill(~ok, 0.0)
            p = torch.nn.functional.pad(p, (0, pad)).amax(3)  # max over sampled rows: [B, G, c, Nk+pad]
            out[:, :, i0:i1] = p.view(B, G, i1 - i0, nKb, bk).amax(-1)
        vis = problem.visible_mask()  # [B, nQb, nKb]
        return BlockScores(out.masked_fill(~vis[:, None], float("-inf")), "mass", {"g": G, "stride": self.stride})
