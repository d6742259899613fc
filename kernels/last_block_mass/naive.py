"""Plain-torch reference of the last-block mass contract (ProxyAttn's ``dynamic`` budget input).

Contract (shared by ``op.py``'s Triton launcher):

* ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``, ``Hq % Hkv == 0``; query head ``h`` reads KV head
  ``h // (Hq // Hkv)``.
* The rows are the last ``m = min(block_q, Nq)`` query rows (not the possibly partial last q-block).
* For each row, the exact softmax of ``q . k * scale`` (``scale`` default ``1/sqrt(D)``) over the keys it
  sees: all keys, or under ``causal`` (bottom-right aligned: row ``r`` at position ``Nk - Nq + r``) the
  keys at positions ``<=`` the row's.
* Averaged over the ``m`` rows and summed per kv-block -> float32 ``[B, Hq, nKb]``; each head sums to 1.
* No per-sequence lengths: call it once per trimmed sequence.

Memory per step is bounded by ``step_mb`` (KV heads are processed in chunks, every query head of a chunk
at once, K never repeated).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def last_block_mass_naive(
    q: Tensor,
    k: Tensor,
    *,
    block_q: int = 128,
    block_k: int = 128,
    causal: bool = True,
    scale: float | None = None,
    step_mb: int = 256,
) -> Tensor:
    """Last-block mass per kv-block in plain torch (the twin of the Triton kernels), computed in float32
    (float64 for float64 inputs)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g, bk = Hq // Hkv, block_k
    nKb = math.ceil(Nk / bk)
    dev = q.device
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    m = min(block_q, Nq)
    rows = torch.arange(Nq - m, Nq, device=dev)
    kpos = torch.arange(Nk, device=dev)
    ok = kpos[None, :] <= (Nk - Nq) + rows[:, None] if causal else torch.ones(m, Nk, dtype=torch.bool, device=dev)
    out = torch.empty(B, Hkv, g, nKb, dtype=torch.float32, device=dev)
    per_kv_head = B * g * m * Nk * 4 * 3
    step = max(1, (step_mb << 20) // per_kv_head)
    for h0 in range(0, Hkv, step):  # chunks of KV heads bound memory; every head of a chunk at once
        h1 = min(h0 + step, Hkv)
        qc = q[:, h0 * g : h1 * g, Nq - m :].to(acc).unflatten(1, (h1 - h0, g))  # [B, h, g, m, D]
        kc = k[:, h0:h1].to(acc)  # [B, h, Nk, D]
        s = torch.matmul(qc, kc[:, :, None].transpose(-1, -2)) * scale  # [B, h, g, m, Nk]
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1).mean(3)  # [B, h, g, Nk]
        p = torch.nn.functional.pad(p, (0, nKb * bk - Nk))
        out[:, h0:h1] = p.view(B, h1 - h0, g, nKb, bk).sum(-1).float()
    return out.view(B, Hq, nKb)
