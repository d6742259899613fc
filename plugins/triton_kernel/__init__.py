"""``triton``: the Triton block-sparse FlashAttention kernel (``sparsekit.kernels.block_sparse``).

Triton is imported lazily, at the first call: ``TRITON_INTERPRET`` is read when the jitted
functions are defined, and a machine without triton still lists (and refuses) this kernel.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockLayout, Capabilities, Kernel
from sparsekit.hookspecs import hookimpl
from sparsekit.kernels._checks import triton_installed


@attrs.frozen
class TritonKernel(Kernel):
    """FlashAttention-style forward over ``kv_indices``: one program per (q-block, query head), K/V
    read through the head's KV group, masks only where a tile crosses the diagonal or a sequence end."""

    name: ClassVar[str] = "triton"
    description: ClassVar[str] = "Triton block-sparse FlashAttention forward (GPU; CPU under TRITON_INTERPRET=1)"
    priority: ClassVar[int] = 100
    capabilities: ClassVar[Capabilities] = Capabilities(
        dtypes=(torch.bfloat16, torch.float16, torch.float32), devices=("cuda",), head_dims=(16, 32, 64, 128, 256),
        block_sizes=(16, 32, 64, 128, 256), interpreted_on_cpu=True)

    def not_supported_reasons(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout | None) -> list[str]:
        if not triton_installed():
            return ["triton is not installed (required by 'triton'): pip install triton, or use kernel='torch'"]
        reasons = super().not_supported_reasons(problem, v, layout)
        if reasons or layout is None:
            return reasons
        from sparsekit.kernels.block_sparse import op

        return op.not_supported_reasons(problem.q, problem.k, v, layout.kv_counts, layout.kv_indices,
                                        block_q=layout.block_q, block_k=layout.block_k,
                                        q_lens=problem.q_lens, k_lens=problem.k_lens)

    def forward(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout) -> Tensor:
        from sparsekit.kernels.block_sparse import op

        return op.block_sparse_attention(problem.q, problem.k, v, layout.kv_counts, layout.kv_indices,
                                         block_q=layout.block_q, block_k=layout.block_k, causal=problem.causal,
                                         q_lens=problem.q_lens, k_lens=problem.k_lens, scale=problem.scale)


@hookimpl
def sparsekit_register_kernels(register: Callable[[type], None]) -> None:
    register(TritonKernel)
