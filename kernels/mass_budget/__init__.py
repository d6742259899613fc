"""The ``dynamic`` budget's arithmetic: from the last block's per-kv-block mass ``[B, Hq, nKb]`` to each head's
ratio and each q-block's block count (``[B, Hq, nQb]`` int32)."""

# ``naive`` (plain torch) imports eagerly; ``op`` (Triton) on first attribute access, so the plain-torch
# path needs no triton and TRITON_INTERPRET may still be set after ``import sparsekit``.
from __future__ import annotations

import importlib
from typing import Any

from .naive import budget_from_count, mass_budget_naive

_FROM_OP = ('MAX_BLOCKS', 'mass_budget', 'not_supported_reasons',)

__all__ = ['budget_from_count', 'mass_budget_naive', *_FROM_OP]


def __getattr__(name: str) -> Any:
    if name in _FROM_OP:
        return getattr(importlib.import_module(".op", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
