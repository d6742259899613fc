"""Launcher of the Triton top-k compaction kernel (contract: ``naive.py``'s docstring).

One launch, grid ``B * Hq * n`` programs; allocates nothing but the output (when ``out`` is not given).
``asc``/``rank`` may be int64 (as ``sort`` returns them): the kernel reads either and stores int32.
"""

from __future__ import annotations


import torch
from torch import Tensor

from .._checks import interpreted
from .._launch import launch, on_device
from .._triton_common import pow2_at_least
from . import kernel as _kernel


def _detect_interpreter() -> bool:
    return interpreted(_kernel._topk_compact)


#: True when the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 at import).
_INTERPRET: bool = _detect_interpreter()


def not_supported_reasons(asc: Tensor) -> list[str]:
    if asc.device.type == "cpu" and not _INTERPRET:
        return ["device=cpu without TRITON_INTERPRET=1 (supported: cuda): move the tensors to a GPU or use "
                "the torch path (topk_compact_naive)"]
    return []


def topk_compact(asc: Tensor, rank: Tensor, count: Tensor, out: Tensor | None = None, block: int = 1024) -> Tensor:
    B, G, n, K = asc.shape
    Hq = count.shape[1]
    reasons = not_supported_reasons(asc)
    ints = (torch.int32, torch.int64)
    if (asc.dtype not in ints or rank.dtype not in ints or rank.shape != asc.shape or Hq % G
            or tuple(count.shape) != (B, Hq, n)):
        reasons.append(f"asc {asc.dtype} {tuple(asc.shape)}, rank {rank.dtype} {tuple(rank.shape)}, count "
                       f"{tuple(count.shape)} (allowed: int32 or int64 [B, G, n, K] twice and [B, Hq, n] with "
                       "G | Hq)")
    if reasons:
        raise ValueError("topk_compact: " + "; ".join(reasons))
    if out is None:
        out = torch.empty(B, Hq, n, K, dtype=torch.int32, device=asc.device)
    if out.numel() == 0:
        return out
    asc = asc.contiguous()
    rank = rank.contiguous()
    assert out.dtype == torch.int32 and out.stride(-1) == 1 and tuple(out.shape) == (B, Hq, n, K)
    BLOCK = max(16, min(block, pow2_at_least(K, 1)))
    with on_device(asc.device):
        launch(_kernel._topk_compact, (B * Hq * n,), (
            asc, rank, count, out, K, n, Hq // G,
            asc.stride(0), asc.stride(1), asc.stride(2),
            count.stride(0), count.stride(1), count.stride(2),
            out.stride(0), out.stride(1), out.stride(2), Hq,
        ), dict(BLOCK=BLOCK), num_warps=4 if BLOCK >= 512 else 2, device=asc.device)
    return out
