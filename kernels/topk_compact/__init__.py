"""The ``topk`` mask's per-head step: stable compaction of a score group's candidates into every head's
ascending ``kv_indices`` row (``[B, Hq, n, K]`` int32)."""

from .naive import topk_compact_naive
from .op import not_supported_reasons, topk_compact

__all__ = ["not_supported_reasons", "topk_compact", "topk_compact_naive"]
