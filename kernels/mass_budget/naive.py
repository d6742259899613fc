"""Plain-torch reference of the mass-to-budget contract (the ``dynamic`` budget after the mass).

Contract (shared by ``op.py``'s Triton launcher):

* ``mass`` float32 ``[B, Hq, nKb]``: per query head, the last q-block's attention mass per kv-block (a head's
  entries are >= 0 and sum to about 1); ``visible`` integer ``[B, nQb]``: kv-blocks q-block ``i`` can see,
  ``visible[:, -1] >= 1``; ``0 < gamma < 1``; ``min_blocks >= 0``.
* ``count`` int32 ``[B, Hq]``: the smallest number of the head's largest masses whose running sum (float32,
  largest first) reaches ``gamma``, at most ``n_last = visible[:, -1]``.
* ``ratio`` float32 ``[B, Hq]``: ``count / n_last`` (correctly rounded).
* ``per_block`` int32 ``[B, Hq, nQb]``: ``ceil(count * visible_i / n_last)`` in exact integer arithmetic,
  clamped to ``[min_blocks, visible_i]``.

The running sums of the two implementations add the same float32 numbers in a different order, so ``count``
can differ by one only when a running sum lies within float32 rounding of ``gamma``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mass_budget_naive(mass: Tensor, visible: Tensor, gamma: float, min_blocks: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(per_block, ratio, count)``, see the module docstring."""
    n_last = visible[:, -1:]  # [B, 1]
    csum = mass.sort(-1, descending=True).values.cumsum(-1)
    count = torch.minimum((csum < gamma).sum(-1) + 1, n_last)  # smallest count reaching gamma
    return budget_from_count(count, visible, min_blocks)


def budget_from_count(count: Tensor, visible: Tensor, min_blocks: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(per_block, ratio, count)`` from each head's ``count`` ``[B, Hq]`` (integer, ``<= visible[:, -1]``)."""
    n_last = visible[:, -1:]  # [B, 1]
    # Results written straight into float32 / int32 outputs (``out=``): no cast ops. The float32 quotient of two
    # integers below 2**24 is the float64 one rounded to float32 (both divisions round correctly).
    ratio = torch.div(count, n_last, out=count.new_empty(count.shape, dtype=torch.float32))  # [B, Hq]
    n = n_last[:, :, None]
    per_block = (count[:, :, None] * visible[:, None, :] + (n - 1)).div_(n, rounding_mode="floor")
    per_block = torch.minimum(per_block.clamp_min_(min_blocks), visible[:, None, :],
                              out=torch.empty_like(per_block, dtype=torch.int32))
    return per_block, ratio, count.to(torch.int32)
