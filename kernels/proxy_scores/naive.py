"""Plain-torch reference of the proxy-score contract (ProxyAttn's ``proxy`` estimator).

Contract (shared by ``op.py``'s Triton launcher):

* ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``; ``groups`` (``G``) divides ``Hkv``. Group ``g`` owns the
  query heads ``[g*Hq/G, (g+1)*Hq/G)`` and the KV heads ``[g*Hkv/G, (g+1)*Hkv/G)``; its proxy query /
  proxy key is the mean of those heads.
* In each q-block (rows ``[i*block_q, min((i+1)*block_q, Nq))``) the sampled rows are every
  ``stride``-th row counted back from the block's last row (the last row is always sampled).
* For each sampled row, the exact softmax of ``q_proxy . k_proxy * scale`` (``scale`` default
  ``1/sqrt(D)``) over the keys it sees: all keys, or under ``causal`` (bottom-right aligned: row ``r`` at
  position ``Nk - Nq + r``) the keys at positions ``<=`` the row's.
* Max-pooled over the q-block's sampled rows and each kv-block's keys -> float32 ``[B, G, nQb, nKb]``.
  Blocks past the q-block's causal horizon (no sampled row sees any of their keys) hold ``-inf``;
  visible blocks hold a probability in ``[0, 1]``.
* No per-sequence lengths: call it once per trimmed sequence.

Memory per step is bounded by ``step_mb`` (q-blocks are processed in chunks); nothing token-level
outlives a step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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


def visible_blocks(Nq: int, Nk: int, block_q: int, block_k: int, causal: bool, device: torch.device) -> Tensor:
    """int64 ``[nQb]``: kv-blocks (a prefix) that q-block ``i`` sees."""
    nQb, nKb = math.ceil(Nq / block_q), math.ceil(Nk / block_k)
    if not causal:
        return torch.full((nQb,), nKb, dtype=torch.long, device=device)
    last = torch.clamp(torch.arange(1, nQb + 1, device=device) * block_q, max=Nq) - 1
    return (((Nk - Nq) + last) // block_k).clamp(max=nKb - 1) + 1


def proxy_scores_naive(
    q: Tensor,
    k: Tensor,
    *,
    groups: int = 1,
    stride: int = 4,
    block_q: int = 128,
    block_k: int = 128,
    causal: bool = True,
    scale: float | None = None,
    step_mb: int = 256,
) -> Tensor:
    """Proxy block scores in plain torch (the twin of the Triton kernel), computed in float32
    (float64 for float64 inputs)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G, bq, bk = groups, block_q, block_k
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    dev = q.device
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qp = q.to(acc).unflatten(1, (G, Hq // G)).mean(2)  # [B, G, Nq, D]
    kp = k.to(acc).unflatten(1, (G, Hkv // G)).mean(2)  # [B, G, Nk, D]
    rows, valid = sampled_rows(Nq, bq, stride, dev)  # [nQb, S]
    S = rows.shape[1]
    pad = nKb * bk - Nk
    kpos = torch.arange(Nk, device=dev)
    offset = Nk - Nq
    out = torch.empty(B, G, nQb, nKb, dtype=torch.float32, device=dev)
    per_block = B * G * S * (Nk + pad) * 4 * 3  # bytes of one q-block's scores, probs and pooling
    step = max(1, (step_mb << 20) // per_block)
    for i0 in range(0, nQb, step):
        i1 = min(i0 + step, nQb)
        r, ok_row = rows[i0:i1], valid[i0:i1]  # [c, S]
        qs = qp[:, :, r]  # [B, G, c, S, D]
        s = torch.matmul(qs, kp[:, :, None].transpose(-1, -2)) * scale  # [B, G, c, S, Nk]
        ok = ok_row[..., None] & (kpos <= offset + r[..., None] if causal else torch.ones_like(kpos, dtype=torch.bool))
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1).masked_fill(~ok, 0.0)
        p = torch.nn.functional.pad(p, (0, pad)).amax(3)  # max over sampled rows: [B, G, c, Nk+pad]
        out[:, :, i0:i1] = p.view(B, G, i1 - i0, nKb, bk).amax(-1).float()
    vis = torch.arange(nKb, device=dev)[None, :] < visible_blocks(Nq, Nk, bq, bk, causal, dev)[:, None]  # [nQb, nKb]
    return out.masked_fill(~vis, float("-inf"))
