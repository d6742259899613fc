"""Launchers of the Triton top-k rank kernels (contract: ``naive.py``'s docstring).

``topk_rank``: one launch of ``B * G * n`` programs (counts, their maximum and / or the group ranks); allocates
only its outputs (the maximum's 4 bytes zero-filled). ``topk_select``: one launch of ``B * Hq * n`` programs
into a given ``out``; allocates nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import fmt_dtypes, interpreted
from .._launch import launch, on_device
from .._triton_common import pow2_at_least
from . import kernel as _kernel

#: True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1 at import).
_INTERPRET: bool = interpreted(_kernel._topk_rank)

#: Most kv-blocks one program sorts in registers (one int64 key per block; 16384 blocks of 128 tokens: 2M tokens).
MAX_BLOCKS = 16384

_INTS = (torch.int8, torch.int16, torch.int32, torch.int64)


def _device_reasons(t: Tensor) -> list[str]:
    if t.device.type == "cpu" and not _INTERPRET:
        return ["device=cpu without TRITON_INTERPRET=1 (supported: cuda): move the tensors to a GPU, set "
                "TRITON_INTERPRET=1 before importing the kernel (tests only), or use the torch path "
                "(topk_rank_naive / TopKMask(impl='torch'))"]
    if t.device.type not in ("cuda", "cpu"):
        return [f"device={t.device.type} (supported: cuda): move the tensors to a GPU or use the torch path"]
    return []


def _shape(t: object) -> str:
    return f"{fmt_dtypes([t.dtype])} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__


def _bounds_reasons(named: dict[str, object], B: int, n: int, dev: torch.device) -> list[str]:
    reasons = []
    for name, t in named.items():
        if not isinstance(t, Tensor) or t.dtype not in _INTS or tuple(t.shape) != (B, n):
            reasons.append(f"{name} {_shape(t)} (supported: integer [B, n] = {[B, n]}): pass the rows' slice of "
                           "problem.block_bounds()")
        elif t.device != dev:
            reasons.append(f"{name} on {t.device}, scores on {dev} (supported: one device): move {name} to {dev}")
    return reasons


def not_supported_reasons(scores: Tensor, first: Tensor, last: Tensor, visible: Tensor,
                          budget: Tensor | None = None) -> list[str]:
    """Every reason ``topk_rank`` cannot run these inputs (empty: supported), each with its fix."""
    if not isinstance(scores, Tensor) or scores.dtype != torch.float32 or scores.dim() != 4:
        return [f"scores {_shape(scores)} (supported: float32 [B, G, n, nKb]): pass BlockScores.scores"]
    B, G, n, nKb = scores.shape
    reasons = _device_reasons(scores)
    if nKb > MAX_BLOCKS:
        reasons.append(f"nKb={nKb} kv-blocks (supported: <= {MAX_BLOCKS}): use larger blocks or the torch path")
    reasons += _bounds_reasons({"first": first, "last": last, "visible": visible}, B, n, scores.device)
    if budget is not None:
        if (not isinstance(budget, Tensor) or budget.dtype != torch.int32 or budget.dim() != 3
                or budget.shape[0] != B or budget.shape[2] != n or budget.shape[1] % max(G, 1)):
            reasons.append(f"budget {_shape(budget)} (supported: int32 [B, Hq, n] with G={G} dividing Hq, B={B}, "
                           f"n={n}): pass the count Budget's value (rows sliced like scores)")
        elif budget.device != scores.device:
            reasons.append(f"budget on {budget.device}, scores on {scores.device} (supported: one device): move "
                           "them together")
    return reasons


def narrow_for(block_k: int) -> int:
    """Halvings of the sort a row seeing few blocks may take (``NARROW``): 2 from 256 sorted keys, 1 at 128, else 0,
    so the narrowest sort keeps >= 64 keys."""
    return 2 if block_k >= 256 else 1 if block_k >= 128 else 0


def topk_rank(scores: Tensor, first: Tensor, last: Tensor, visible: Tensor, sink: bool, diagonal: bool,
              budget: Tensor | None = None, *, ranks: bool = True, checked: bool = False, narrow: int | None = None
              ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(rank, counts, max_k)`` like ``topk_rank_naive``, in one launch (none when there is nothing to do).

    ``checked=True``: the caller already ran ``not_supported_reasons`` on these inputs (or on the tensors they are
    row slices of) and got no reason, so they are not checked twice (host time per call). ``narrow``: 0, 1 or 2
    halvings of the sort for rows that see at most half / a quarter of the blocks (``None``: ``narrow_for``;
    the result is the same)."""
    if narrow not in (None, 0, 1, 2):
        raise ValueError(f"topk_rank: narrow={narrow!r} (supported: None, 0, 1, 2): pass one of those")
    reasons = [] if checked else not_supported_reasons(scores, first, last, visible, budget)
    if reasons:
        raise ValueError("topk_rank: inputs not supported by the Triton kernel:\n  - " + "\n  - ".join(reasons))
    B, G, n, nKb = scores.shape
    dev = scores.device
    rank = torch.empty(B, G, n, nKb, dtype=torch.int32, device=dev) if ranks else None
    counts = max_k = None
    if budget is not None:
        counts = torch.empty(budget.shape, dtype=torch.int32, device=dev)
        max_k = torch.zeros(1, dtype=torch.int32, device=dev)  # atomic_max target
    if B * G * n == 0 or (rank is None and counts is None):
        return rank, counts, max_k
    hpg = counts.shape[1] // G if counts is not None else 1
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    block_k = pow2_at_least(nKb)
    narrow = narrow_for(block_k) if narrow is None else min(narrow, (block_k // 16).bit_length() - 1)
    with on_device(dev):
        # an absent tensor is passed as scores: its constexpr branch never reads it
        launch(_kernel._topk_rank, (B * G * n,), (
            scores, _or(budget, scores), first, last, visible, _or(rank, scores), _or(counts, scores),
            _or(max_k, scores), n, G, hpg, nKb,
            scores.stride(0), scores.stride(1), scores.stride(2),
            *_strides3(budget), first.stride(0), first.stride(1), last.stride(0), last.stride(1),
            visible.stride(0), visible.stride(1), *_strides3(rank), *_strides3(counts),
        ), dict(SINK=bool(sink), DIAGONAL=bool(diagonal), WITH_COUNTS=counts is not None, WITH_RANK=rank is not None,
                BLOCK_K=block_k, BLOCK_H=min(128, pow2_at_least(hpg)), NARROW=narrow),
            num_warps=4 if block_k <= 1024 else 8 if block_k <= 4096 else 16, device=dev)
    return rank, counts, max_k


def _or(t: Tensor | None, other: Tensor) -> Tensor:
    return other if t is None else t


def _strides3(t: Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else (t.stride(0), t.stride(1), t.stride(2))


def topk_select(rank: Tensor, counts: Tensor, visible: Tensor, out: Tensor, block: int = 1024) -> Tensor:
    """``out`` like ``topk_select_naive``, in one launch."""
    reasons = []
    if not isinstance(rank, Tensor) or rank.dtype != torch.int32 or rank.dim() != 4:
        reasons.append(f"rank {_shape(rank)} (supported: int32 [B, G, n, nKb]): pass topk_rank's rank")
    else:
        B, G, n, nKb = rank.shape
        reasons += _device_reasons(rank)
        if (not isinstance(counts, Tensor) or counts.dtype != torch.int32 or counts.dim() != 3
                or counts.shape[0] != B or counts.shape[2] != n or counts.shape[1] % max(G, 1)):
            reasons.append(f"counts {_shape(counts)} (supported: int32 [B, Hq, n] with G={G} dividing Hq, B={B}, "
                           f"n={n}): pass topk_rank's counts")
        else:
            Hq = counts.shape[1]
            if (not isinstance(out, Tensor) or out.dtype != torch.int32 or out.dim() != 4
                    or tuple(out.shape[:3]) != (B, Hq, n) or (out.numel() and out.stride(-1) != 1)):
                reasons.append(f"out {_shape(out)} (supported: int32 [B, Hq, n, K] = {[B, Hq, n, 'K']}, last dim "
                               "contiguous): allocate it with torch.empty")
        reasons += _bounds_reasons({"visible": visible}, B, n, rank.device)
        for name, t in (("counts", counts), ("out", out)):
            if isinstance(t, Tensor) and t.device != rank.device:
                reasons.append(f"{name} on {t.device}, rank on {rank.device} (supported: one device): move them "
                               "together")
    if reasons:
        raise ValueError("topk_select: inputs not supported by the Triton kernel:\n  - " + "\n  - ".join(reasons))
    Hq, K = counts.shape[1], out.shape[-1]
    if out.numel() == 0:
        return out
    if rank.stride(-1) != 1:
        rank = rank.contiguous()
    BLOCK = max(16, min(block, pow2_at_least(nKb, 1)))
    with on_device(rank.device):
        launch(_kernel._topk_select, (B * Hq * n,), (
            rank, counts, visible, out, K, n, Hq, Hq // G,
            rank.stride(0), rank.stride(1), rank.stride(2), counts.stride(0), counts.stride(1), counts.stride(2),
            visible.stride(0), visible.stride(1), out.stride(0), out.stride(1), out.stride(2),
        ), dict(BLOCK=BLOCK), num_warps=4 if BLOCK >= 512 else 2, device=rank.device)
    return out
