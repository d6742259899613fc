"""ProxyAttn's proxy block scores: max-pooled softmax of strided proxy-query rows, ``[B, G, nQb, nKb]``."""

# ``naive`` (plain torch) imports eagerly; ``op`` (Triton) on first attribute access, so the plain-torch
# path needs no triton and TRITON_INTERPRET may still be set after ``import sparsekit``.
from __future__ import annotations

import importlib
from typing import Any

from .naive import proxy_scores_naive, sampled_rows, visible_blocks

_FROM_OP = ('CAPABILITIES', 'Capabilities', 'KernelConfig', 'not_supported_reasons', 'proxy_keys', 'proxy_scores',)

__all__ = ['proxy_scores_naive', 'sampled_rows', 'visible_blocks', *_FROM_OP]


def __getattr__(name: str) -> Any:
    if name in _FROM_OP:
        return getattr(importlib.import_module(".op", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
