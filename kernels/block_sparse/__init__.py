"""Block-sparse FlashAttention forward over a ``BlockLayout`` (kv_counts / kv_indices).

``naive`` (plain torch) imports eagerly; ``op`` (Triton) on first attribute access, so importing this
package needs no triton, and ``TRITON_INTERPRET`` may still be set after ``import sparsekit``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .naive import block_sparse_attention_naive

_FROM_OP = ("CAPABILITIES", "Capabilities", "KernelConfig", "block_sparse_attention", "not_supported_reasons")

__all__ = ["block_sparse_attention_naive", *_FROM_OP]


def __getattr__(name: str) -> Any:
    if name in _FROM_OP:
        return getattr(importlib.import_module(".op", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
