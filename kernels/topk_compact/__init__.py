"""The ``topk`` mask's per-head step: stable compaction of a score group's candidates into every head's
ascending ``kv_indices`` row (``[B, Hq, n, K]`` int32)."""

# ``naive`` (plain torch) imports eagerly; ``op`` (Triton) on first attribute access, so the plain-torch
# path needs no triton and TRITON_INTERPRET may still be set after ``import sparsekit``.
from __future__ import annotations

import importlib
from typing import Any

from .naive import topk_compact_naive

_FROM_OP = ('not_supported_reasons', 'topk_compact',)

__all__ = ['topk_compact_naive', *_FROM_OP]


def __getattr__(name: str) -> Any:
    if name in _FROM_OP:
        return getattr(importlib.import_module(".op", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
