"""Dense attention in plain torch: the reference every strategy is judged against."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layout import lengths


def dense_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, q_lens: Tensor | None = None,
                    k_lens: Tensor | None = None, scale: float | None = None, chunk: int = 1024,
                    compute_dtype: torch.dtype | None = None, return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Exact softmax attention, bottom-right causal, GQA by head groups, per-sequence lengths.

    Rows are processed ``chunk`` at a time so memory stays ``O(chunk * Nk)`` per head. Computes in
    ``compute_dtype`` (default float32, float64 for float64 inputs) and returns q's dtype. Padded
    rows and rows that see no key give 0 (log-sum-exp ``-inf``).
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    acc = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    ql, kl = lengths(q_lens, Nq, B, dev), lengths(k_lens, Nk, B, dev)
    kk = k.to(acc).view(B, Hkv, 1, Nk, D)
    vv = v.to(acc).view(B, Hkv, 1, Nk, v.shape[-1])
    kpos = torch.arange(Nk, device=dev)
    out = torch.zeros(B, Hq, Nq, v.shape[-1], dtype=q.dtype, device=dev)
    lse = torch.full((B, Hq, Nq), float("-inf"), device=dev)
    for r0 in range(0, Nq, chunk):
        r1 = min(r0 + chunk, Nq)
        rows = torch.arange(r0, r1, device=dev)
        qc = q[:, :, r0:r1].to(acc).view(B, Hkv, g, r1 - r0, D)
        s = torch.matmul(qc, kk.transpose(-1, -2)) * scale  # [B, Hkv, g, m, Nk]
        ok = (kpos[None, None, :] < kl[:, None, None]) & (rows[None, :, None] < ql[:, None, None])  # [B, m, Nk]
        if causal:
            ok = ok & (kpos[None, None, :] <= (kl - ql)[:, None, None] + rows[None, :, None])
        s = s.masked_fill(~ok[:, None, None], float("-inf"))
        m = torch.logsumexp(s, dim=-1, keepdim=True)
        p = torch.exp(s - m.clamp_min(torch.finfo(acc).min)).masked_fill(~ok[:, None, None], 0.0)
        out[:, :, r0:r1] = torch.matmul(p, vv).reshape(B, Hq, r1 - r0, -1).to(q.dtype)
        lse[:, :, r0:r1] = m.reshape(B, Hq, r1 - r0).float()
    return (out, lse) if return_lse else out
