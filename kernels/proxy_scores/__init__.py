"""ProxyAttn's proxy block scores: max-pooled softmax of strided proxy-query rows, ``[B, G, nQb, nKb]``."""

from .naive import proxy_scores_naive, sampled_rows, visible_blocks
from .op import CAPABILITIES, Capabilities, KernelConfig, not_supported_reasons, proxy_keys, proxy_scores

__all__ = [
    "CAPABILITIES",
    "Capabilities",
    "KernelConfig",
    "not_supported_reasons",
    "proxy_keys",
    "proxy_scores",
    "proxy_scores_naive",
    "sampled_rows",
    "visible_blocks",
]
