"""Block-sparse FlashAttention forward over a ``BlockLayout`` (kv_counts / kv_indices)."""

from .naive import block_sparse_attention_naive
from .op import CAPABILITIES, Capabilities, KernelConfig, block_sparse_attention, not_supported_reasons

__all__ = [
    "CAPABILITIES",
    "Capabilities",
    "KernelConfig",
    "block_sparse_attention",
    "block_sparse_attention_naive",
    "not_supported_reasons",
]
