"""The ``topk`` mask on the GPU: per score group and q-block row, every kv-block's rank in the group's stable
descending order plus the layout's counts and their maximum (launch A), then every head's ascending
``kv_indices`` row (launch B)."""

# ``naive`` (plain torch) imports eagerly; ``op`` (Triton) on first attribute access, so the plain-torch
# path needs no triton and TRITON_INTERPRET may still be set after ``import sparsekit``.
from __future__ import annotations

import importlib
from typing import Any

from .naive import forced_count, topk_rank_naive, topk_select_naive

_FROM_OP = ('MAX_BLOCKS', 'not_supported_reasons', 'topk_rank', 'topk_select',)

__all__ = ['forced_count', 'topk_rank_naive', 'topk_select_naive', *_FROM_OP]


def __getattr__(name: str) -> Any:
    if name in _FROM_OP:
        return getattr(importlib.import_module(".op", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
