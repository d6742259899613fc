"""``torch``: the memory-bounded plain-torch kernel (runs any layout on any device)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockLayout, Capabilities, Kernel
from sparsekit.stages import positive_int
from sparsekit.kernels.block_sparse.naive import block_sparse_attention_naive


@attrs.frozen
class TorchKernel(Kernel):
    """Plain torch: loops over q-blocks, gathers only the kept K/V blocks (never ``Nq x Nk``).

    ``step_mb`` bounds the float32 working set of one step (heads are processed in chunks).
    """

    name: ClassVar[str] = "torch"
    description: ClassVar[str] = "plain-torch reference of any layout, memory bounded (slow, runs anywhere)"
    priority: ClassVar[int] = 0
    capabilities: ClassVar[Capabilities] = Capabilities(
        dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), devices=("cpu", "cuda", "mps", "xpu"))

    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})

    def forward(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout) -> Tensor:
        per_head = problem.B * problem.block_q * max(layout.max_k, 1) * problem.block_k * 4 * 3
        heads = max(1, min(problem.Hq, (self.step_mb << 20) // max(per_head, 1)))
        return block_sparse_attention_naive(
            problem.q, problem.k, v, layout.kv_counts, layout.kv_indices, block_q=layout.block_q,
            block_k=layout.block_k, causal=problem.causal, q_lens=problem.q_lens, k_lens=problem.k_lens,
            scale=problem.scale, heads_per_chunk=heads)  # type: ignore[return-value]
