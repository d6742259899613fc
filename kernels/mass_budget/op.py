"""Launcher of the Triton mass-to-budget kernel (contract: ``naive.py``'s docstring).

One launch of ``B * Hq`` programs; allocates only the three outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import interpreted
from .._launch import launch, on_device
from .._triton_common import pow2_at_least
from . import kernel as _kernel

#: True when the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 at import).
_INTERPRET: bool = interpreted(_kernel._mass_budget)

#: Most kv-blocks one program sorts in registers (16384 blocks of 128 tokens: 2M tokens).
MAX_BLOCKS = 16384


def not_supported_reasons(mass: Tensor, visible: Tensor) -> list[str]:
    """Every reason the kernel cannot run these inputs (empty: supported), each with its fix."""
    reasons = []
    if mass.device.type == "cpu" and not _INTERPRET:
        reasons.append("device=cpu without TRITON_INTERPRET=1 (supported: cuda): move the tensors to a GPU or use "
                       "the torch path (mass_budget_naive)")
    if mass.dtype != torch.float32 or mass.dim() != 3:
        reasons.append(f"mass {mass.dtype} {tuple(mass.shape)} (supported: float32 [B, Hq, nKb]): pass the float32 "
                       "mass of last_block_mass")
    elif mass.shape[-1] > MAX_BLOCKS:
        reasons.append(f"nKb={mass.shape[-1]} kv-blocks (supported: <= {MAX_BLOCKS}): use larger blocks or the torch "
                       "path")
    if visible.dim() != 2 or visible.dtype.is_floating_point or (mass.dim() == 3 and visible.shape[0] != mass.shape[0]):
        reasons.append(f"visible {visible.dtype} {tuple(visible.shape)} (supported: integer [B, nQb] with mass's B): "
                       "pass problem.block_bounds()[2]")
    if visible.device != mass.device:
        reasons.append(f"visible on {visible.device}, mass on {mass.device} (supported: one device): move them "
                       "together")
    return reasons


def mass_budget(mass: Tensor, visible: Tensor, gamma: float, min_blocks: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(per_block, ratio, count)`` like ``mass_budget_naive``, in one launch."""
    reasons = not_supported_reasons(mass, visible)
    if not 0.0 < gamma < 1.0:
        reasons.append(f"gamma={gamma} (supported: 0 < gamma < 1; gamma >= 1 keeps every block): pass a fraction")
    if min_blocks < 0:
        reasons.append(f"min_blocks={min_blocks} (supported: >= 0): pass a non-negative count")
    if reasons:
        raise ValueError("mass_budget: inputs not supported by the Triton kernel:\n  - " + "\n  - ".join(reasons))
    B, Hq, nKb = mass.shape
    nQb = visible.shape[1]
    dev = mass.device
    per_block = torch.empty(B, Hq, nQb, dtype=torch.int32, device=dev)
    ratio = torch.empty(B, Hq, dtype=torch.float32, device=dev)
    count = torch.empty(B, Hq, dtype=torch.int32, device=dev)
    if per_block.numel() == 0:
        return per_block, ratio, count
    mass = mass if mass.stride(-1) == 1 else mass.contiguous()
    block_k = pow2_at_least(nKb)
    with on_device(dev):
        launch(_kernel._mass_budget, (B * Hq,),
               (mass, visible, per_block, ratio, count, nKb, nQb, Hq, float(gamma), int(min_blocks),
                mass.stride(0), mass.stride(1), visible.stride(0), visible.stride(1), per_block.stride(0),
                per_block.stride(1)),
               dict(BLOCK_K=block_k, BLOCK_Q=min(1024, pow2_at_least(nQb))),
               num_warps=8 if block_k >= 4096 else 4, device=dev)
    return per_block, ratio, count
