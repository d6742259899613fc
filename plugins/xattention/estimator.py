"""``xattention``: XAttention's antidiagonal strided block scores (arXiv 2503.16428)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F

from sparsekit import AttentionProblem, BlockScores, ConfigError, Estimator, InputError
from sparsekit.stages import positive_int

STRIDES = (4, 8, 16)


def _stride(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in STRIDES:
        raise ConfigError(f"stride={value!r} is not allowed (allowed: {', '.join(map(str, STRIDES))}). "
                          "Fix: pass stride=8 (the default; 16 is cheaper, 4 more precise)")


@attrs.frozen
class XAttentionEstimator(Estimator):
    """Antidiagonal strided scores, one group per query head (``G = Hq``).

    Q and K are cut into groups of ``stride`` consecutive rows (zero-padded to whole blocks). Strided row
    ``i`` against strided column ``j`` scores ``sum_s q[i*stride + s] . k[j*stride + stride-1-s]`` times
    ``scale / stride`` (``scale`` the problem's softmax scale, ``1/sqrt(D)`` by default). A strided cell is
    visible when its first key is visible to the group's last valid query (bottom-right causal; non-causal:
    every valid key). Softmax per strided row over its visible cells, summed into (q-block, kv-block) cells
    and divided by the row total, so every q-block row sums to 1. Output ``[B, Hq, nQb, nKb]`` float32
    ``"mass"``; invisible blocks ``-inf``. GQA reads each head's KV head by broadcasting (no repeat).
    Memory per step is bounded by ``step_mb`` (q-blocks in chunks). Cost ~ ``1/stride`` of dense QK.
    """

    name: ClassVar[str] = "xattention"
    description: ClassVar[str] = "XAttention: antidiagonal strided scores, softmax mass per block"
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    stride: int = attrs.field(default=8, validator=_stride)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        B, Hq, Hkv, Nq, Nk, D = problem.B, problem.Hq, problem.Hkv, problem.Nq, problem.Nk, problem.D
        s, bq, bk, g = self.stride, problem.block_q, problem.block_k, problem.group_size
        for what, size in (("block_q", bq), ("block_k", bk)):
            if size % s:
                raise InputError(f"stride={s} does not divide {what}={size} (allowed: strides dividing both block "
                                 f"sizes, of {STRIDES}). Fix: build with estimator='xattention(stride=4)' or {what}=128")
        nQb, nKb, dev = problem.nQb, problem.nKb, problem.device
        rq, rk = bq // s, bk // s  # strided rows per q-block, strided columns per kv-block
        ncol = nKb * rk
        # keys: zero-pad to whole blocks, reverse each group of `stride` rows, flatten the group
        # matmuls in the input dtype (16-bit inputs use tensor cores with fp32 accumulation), softmax in fp32
        cdt = problem.k.dtype if problem.k.dtype in (torch.float16, torch.bfloat16, torch.float64) else torch.float32
        k = F.pad(problem.k.to(cdt), (0, 0, 0, nKb * bk - Nk))  # [B, Hkv, nKb*bk, D]
        kr = k.view(B, Hkv, ncol, s, D).flip(3).reshape(B, Hkv, 1, ncol, s * D)
        col_first = torch.arange(ncol, device=dev) * s  # first key of each strided column
        col_ok = col_first < Nk
        offset = Nk - Nq
        scale = problem.softmax_scale / s
        out = torch.empty(B, Hq, nQb, nKb, dtype=torch.float32, device=dev)
        per_block = B * Hq * rq * ncol * 4 * 3  # bytes of one q-block's scores, probabilities and sums
        step = max(1, (self.step_mb << 20) // per_block)
        for i0 in range(0, nQb, step):
            i1 = min(i0 + step, nQb)
            c = i1 - i0
            q = problem.q[:, :, i0 * bq : min(i1 * bq, Nq)].to(cdt)
            q = F.pad(q, (0, 0, 0, c * bq - q.shape[2])).reshape(B, Hkv, g, c * rq, s * D)  # [B, Hkv, g, c*rq, s*D]
            # causal: only the kv-blocks this chunk's last row can see (the rest of the row stays 0)
            last_row = min(i1 * bq, Nq) - 1
            nkb = nKb if not problem.causal else min(nKb, max(0, offset + last_row) // bk + 1)
            cols = nkb * rk
            scores = torch.matmul(q, kr[..., :cols, :].transpose(-1, -2)).float() * scale  # [B, Hkv, g, c*rq, cols]
            row_first = (i0 * rq + torch.arange(c * rq, device=dev)) * s
            row_last = torch.clamp(row_first + s - 1, max=Nq - 1)  # last valid query of the group
            ok = (row_first < Nq)[:, None] & col_ok[None, :cols]
            if problem.causal:
                ok = ok & (col_first[None, :cols] <= offset + row_last[:, None])
            p = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1).masked_fill(~ok, 0.0)
            cell = p.view(B, Hkv, g, c, rq, nkb, rk).sum((4, 6))  # [B, Hkv, g, c, nkb]
            cell = cell / cell.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            out[:, :, i0:i1, nkb:] = 0.0
            out[:, :, i0:i1, :nkb] = cell.view(B, Hq, c, nkb)
        vis = problem.visible_mask()  # [B, nQb, nKb]
        return BlockScores(out.masked_fill(~vis[:, None], float("-inf")), "mass", {"stride": s})
