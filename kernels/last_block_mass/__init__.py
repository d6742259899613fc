"""The ``dynamic`` budget's input: per query head, the last block's exact attention mass per kv-block
(``[B, Hq, nKb]``)."""

# ``naive`` (plain torch) imports eagerly; ``op`` (Triton) on first attribute access, so the plain-torch
# path needs no triton and TRITON_INTERPRET may still be set after ``import sparsekit``.
from __future__ import annotations

import importlib
from typing import Any

from .naive import last_block_mass_naive

_FROM_OP = ('CAPABILITIES', 'Capabilities', 'KernelConfig', 'last_block_mass', 'not_supported_reasons',)

__all__ = ['last_block_mass_naive', *_FROM_OP]


def __getattr__(name: str) -> Any:
    if name in _FROM_OP:
        return getattr(importlib.import_module(".op", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
