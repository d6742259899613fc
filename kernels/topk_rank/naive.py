"""Plain-torch reference of the top-k rank contract (the ``topk`` mask on the GPU: two launches, one host sync).

Contract (shared by ``op.py``'s Triton launchers):

``topk_rank(scores, first, last, visible, sink, diagonal, budget=None, *, ranks=True) -> (rank, counts, max_k)``

* ``scores`` float32 ``[B, G, n, nKb]``: block scores of ``n`` q-block rows (any values: NaN, +-inf, -0.0);
  ``first``, ``last``, ``visible`` integer ``[B, n]``: the rows' diagonal kv-blocks and visible prefix
  (``problem.block_bounds()``, possibly a row slice; ``first <= last``, both negative for a non-causal q-block
  whose rows lie before the keys); ``budget`` int32 ``[B, Hq, n]`` with ``Hq % G == 0`` (any values, negative
  and above ``visible`` too); head ``h`` reads group ``h // (Hq // G)``.
* ``rank`` int32 ``[B, G, n, nKb]`` (``None`` when ``ranks=False``): ``rank[b, g, i, j]`` is the position of
  block ``j`` in the group's stable descending order of the key: the score as ``torch.nan_to_num(score,
  nan=-inf)`` makes it (NaN -> ``-inf``, ``+-inf`` scores -> ``+-float32 max``: below forced, above NaN), the diagonal
  blocks ``[first, last]`` as ``+inf`` when ``diagonal``, block 0 as ``+inf`` when ``sink``, then every block
  ``j >= visible`` as ``-inf`` (invisible beats forced); ``-0.0 == +0.0``; ties go to the lower block index. It
  is the inverse of ``TopKMask._group_order``'s permutation, so the visible blocks hold ranks
  ``0 .. visible-1``.
* ``counts`` int32 ``[B, Hq, n]`` (``None`` without ``budget``): ``clamp(budget, forced, visible)`` with
  ``forced = forced_count(first, last, visible, sink, diagonal)`` — the layout's ``kv_counts``.
* ``max_k`` int32 ``[1]`` (``None`` without ``budget``): ``counts.max()`` (0 when ``counts`` is empty), left on
  the device: ``int(max_k)`` is the one 4-byte host read that sizes the layout.

``topk_select(rank, counts, visible, out) -> out``

* ``rank``, ``counts``, ``visible`` as returned / passed above (same ``n`` rows); ``out`` int32
  ``[B, Hq, n, K]`` with ``counts <= K`` (any strides, last dim contiguous for the kernel: e.g. a row slice of
  the layout). Row ``(b, h, i)`` receives, in ascending order, the blocks ``j`` of its group with
  ``rank < counts[b, h, i]`` (exactly ``counts`` of them, all visible), then 0 up to ``K``. Every slot is
  written once; nothing else is.

Together: ``out`` = ``kv_indices`` and ``counts`` = ``kv_counts`` of ``TopKMask`` (``impl="torch"``), bit for bit.

The twin builds the key as the kernel does, as an order-preserving int32 image of the float32 key (``+inf`` /
``-inf`` images for forced / invisible blocks) packed with ``nKb - 1 - j`` into unique int64 keys, so a plain
descending sort gives the stable order. Temporaries: ``~36 * B*G*n*nKb`` bytes (``topk_rank_naive``: int32 image,
int64 key, sort values and indices) and ``~26 * B*Hq*n*nKb`` (``topk_select_naive``: flags, int64 sort).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: int32 images of +inf and -inf under the order-preserving map (positive floats: their bits; negative
#: floats: their bits with the magnitude flipped, ``bits ^ 0x7FFFFFFF``); +-float32 max are one step inside.
POS_INF_IMAGE = 0x7F800000
NEG_INF_IMAGE = -0x7F800001


def forced_count(first: Tensor, last: Tensor, visible: Tensor, sink: bool, diagonal: bool) -> Tensor:
    """int64 ``[B, nQb]``: how many blocks are always kept (``forced_blocks(...).sum(-1)`` in
    ``plugins/common/masks.py``) from the block bounds alone (no ``nKb`` axis).

    The diagonal blocks ``[first, last]`` (``first <= last``; both negative when a non-causal q-block's rows
    lie before the keys) clipped to the visible prefix, plus the sink block 0 when the q-block sees anything
    and the diagonal does not already hold block 0. Never more than ``visible``."""
    if not diagonal:
        return (visible > 0).long() if sink else torch.zeros_like(visible)
    lo = first.clamp_min(0)
    n = (torch.minimum(last + 1, visible) - lo).clamp_min_(0)  # blocks max(first, 0) .. min(last, visible - 1)
    if sink:
        # block 0 lies outside [first, last] iff max(first, 0) > min(last, 0) (first > 0 or last < 0)
        n = n + ((visible > 0) & (lo > last.clamp_max(0)))
    return n


def topk_rank_naive(scores: Tensor, first: Tensor, last: Tensor, visible: Tensor, sink: bool, diagonal: bool,
                    budget: Tensor | None = None, *, ranks: bool = True
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(rank, counts, max_k)``, see the module docstring."""
    counts = max_k = rank = None
    if budget is not None:
        forced = forced_count(first, last, visible, sink, diagonal)[:, None]  # [B, 1, n]
        counts = torch.minimum(torch.maximum(budget, forced), visible[:, None]).to(torch.int32)
        max_k = counts.amax().reshape(1) if counts.numel() else counts.new_zeros(1)
    if ranks:
        B, G, n, nKb = scores.shape
        j = torch.arange(nKb, device=scores.device)
        bits = scores.contiguous().view(torch.int32)
        mag = bits & 0x7FFFFFFF
        img = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # order-preserving: a < b iff img(a) < img(b)
        img = img.masked_fill(mag == 0, 0).clamp_(NEG_INF_IMAGE + 1, POS_INF_IMAGE - 1)  # -0.0 -> 0; inf -> max
        img.masked_fill_(mag > POS_INF_IMAGE, NEG_INF_IMAGE)  # NaN -> -inf
        if diagonal:
            img.masked_fill_(((j >= first[:, :, None]) & (j <= last[:, :, None]))[:, None], POS_INF_IMAGE)
        if sink:
            img[..., 0] = POS_INF_IMAGE
        img.masked_fill_((j >= visible[:, :, None])[:, None], NEG_INF_IMAGE)
        key = (img.long() << 32) | (nKb - 1 - j)  # unique: ties resolved to the lower block index
        order = key.sort(-1, descending=True).indices  # [B, G, n, nKb]
        rank = torch.empty(B, G, n, nKb, dtype=torch.int32, device=scores.device)
        rank.scatter_(-1, order, torch.arange(nKb, dtype=torch.int32, device=scores.device).expand(B, G, n, nKb))
    return rank, counts, max_k


def topk_select_naive(rank: Tensor, counts: Tensor, visible: Tensor, out: Tensor) -> Tensor:
    """``out``, see the module docstring (``visible`` is implied by the contract; the twin does not read it)."""
    B, G, n, nKb = rank.shape
    Hq, K = counts.shape[1], out.shape[-1]
    keep = rank[:, :, None] < counts.view(B, G, Hq // G, n, 1)  # [B, G, hpg, n, nKb]
    j = torch.arange(nKb, dtype=torch.int32, device=rank.device)
    idx = torch.where(keep, j, nKb).sort(-1).values[..., :K]  # kept blocks ascending, then nKb
    if idx.shape[-1] < K:
        idx = torch.cat([idx, idx.new_full((*idx.shape[:-1], K - idx.shape[-1]), nKb)], -1)
    out.copy_(torch.where(idx == nKb, 0, idx).view(B, Hq, n, K))
    return out
