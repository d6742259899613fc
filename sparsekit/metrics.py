"""Quality metrics of a layout or an output against dense attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layout import BlockLayout


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    ref64 = ref.double()
    return float((out.double() - ref64).norm() / ref64.norm().clamp_min(1e-300))


def attention_recall(q: Tensor, k: Tensor, layout: BlockLayout, *, rows: int | None = 256, scale: float | None = None,
                     seed: int = 0) -> float:
    """True softmax mass that falls inside the kept blocks, averaged over heads and query rows.

    Exact for every row evaluated; ``rows`` samples that many query rows per sequence (always
    including the last one) so memory stays ``O(Hq * rows * Nk)``; ``rows=None`` evaluates all.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    keep = layout.to_dense()  # [B, Hq, nQb, nKb]
    ql = layout.q_lens.tolist() if layout.q_lens is not None else [Nq] * B
    kl = layout.k_lens.tolist() if layout.k_lens is not None else [Nk] * B
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for b in range(B):
        n_rows = ql[b]
        if rows is None or rows >= n_rows:
            sel = torch.arange(n_rows)
        else:
            sel = torch.cat([torch.randperm(n_rows - 1, generator=gen)[: rows - 1], torch.tensor([n_rows - 1])])
        sel = sel.to(dev)
        qs = q[b, :, sel].float().view(Hkv, g, -1, D)
        kb = k[b, :, : kl[b]].float()
        s = torch.matmul(qs, kb[:, None].transpose(-1, -2)) * scale  # [Hkv, g, r, Nk_b]
        kpos = torch.arange(kl[b], device=dev)
        ok = torch.ones(len(sel), kl[b], dtype=torch.bool, device=dev)
        if layout.causal:
            ok = kpos[None, :] <= (kl[b] - ql[b]) + sel[:, None]
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1).reshape(Hq, len(sel), kl[b])
        kept = keep[b][:, sel // layout.block_q][..., kpos // layout.block_k]  # [Hq, r, Nk_b]
        total += float((p * kept).sum())
        count += Hq * len(sel)
    return total / max(count, 1)
