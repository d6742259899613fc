"""Plain-torch reference of the top-k compaction contract (the ``topk`` mask's per-head step).

Contract (shared by ``op.py``'s Triton launcher):

* ``asc`` int32 or int64 ``[B, G, n, K]``: per score group and q-block row, ``K`` distinct candidate kv-blocks
  in ascending order; ``rank`` int32 or int64 ``[B, G, n, K]``: each candidate's rank in the group's order, a
  permutation of ``0..K-1`` per row (int64 as ``sort`` returns them: no casts needed).
* ``count`` ``[B, Hq, n]`` (any integer dtype), ``0 <= count <= K``, ``Hq % G == 0``; head ``h`` reads group
  ``h // (Hq // G)``.
* Output int32 ``[B, Hq, n, K]``: row ``(b, h, i)`` holds, in ascending order, the candidates of its group
  whose rank is ``< count[b, h, i]`` (exactly ``count`` of them), then 0 up to ``K``.
* ``out``: optional int32 ``[B, Hq, n, K]`` destination (any strides, e.g. a q-block slice of a layout).

Every slot is written exactly once: a kept candidate goes to the number of kept candidates before it; a
dropped one writes 0 to ``count`` + the number of dropped candidates before it (a permutation of the row,
so no memset is needed). Temporaries: ``~18 * B*Hq*n*K`` bytes (bool flags, int32 slots, int64 scatter
index, int32 values).
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_compact_naive(asc: Tensor, rank: Tensor, count: Tensor, out: Tensor | None = None) -> Tensor:
    B, G, n, K = asc.shape
    Hq = count.shape[1]
    hpg = Hq // G
    if out is None:
        out = torch.empty(B, Hq, n, K, dtype=torch.int32, device=asc.device)
    c = count.to(torch.int32).view(B, G, hpg, n, 1)
    keep = rank[:, :, None] < c  # [B, G, hpg, n, K]
    cs = keep.cumsum(-1, dtype=torch.int32)  # kept candidates up to and including this one
    m = torch.arange(K, dtype=torch.int32, device=asc.device)
    pad = torch.sub(m, cs).add_(c)  # dropped candidate: count + dropped ones before it
    slot = torch.where(keep, cs.sub_(1), pad).long()  # kept candidate: kept ones before it
    del cs, pad
    vals = torch.where(keep, asc.to(torch.int32)[:, :, None], 0)
    out.view(B, G, hpg, n, K).scatter_(-1, slot, vals)
    return out
