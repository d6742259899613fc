"""Checks shared by the planning kernels' launchers (no triton import here)."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from typing import Iterable

import torch
from torch import Tensor


@lru_cache(maxsize=None)
def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (looked up once; nothing is imported)."""
    return importlib.util.find_spec("triton") is not None


def fmt_dtypes(dts: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dts)


def fmt_ints(xs: Iterable[int]) -> str:
    return ", ".join(str(x) for x in xs)


def qk_reasons(q: Tensor, k: Tensor, *, dtypes: Iterable[torch.dtype], devices: Iterable[str],
               head_dims: Iterable[int], interpret: bool) -> list[str]:
    """Reasons (field, value, supported values, fix) why a planning kernel cannot read these q/k
    ``[B, H, N, D]``; the fallback offered is ``impl='torch'``."""
    dtypes, head_dims = tuple(dtypes), tuple(head_dims)
    reasons: list[str] = []
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            reasons.append(f"{name} is a {type(t).__name__} (supported: torch.Tensor): pass a tensor")
        elif t.dim() != 4:
            reasons.append(f"{name}.dim()={t.dim()} (supported: 4, [B, H, N, D]): reshape {name} to [B, H, N, D]")
    if reasons:
        return reasons
    B, Hq, _, D = q.shape
    Bk, Hkv, _, Dk = k.shape
    if q.dtype not in dtypes:
        reasons.append(f"q.dtype={fmt_dtypes([q.dtype])} (supported: {fmt_dtypes(dtypes)}): cast q and k "
                       "to bfloat16/float16, or use impl='torch'")
    if k.dtype != q.dtype:
        reasons.append(f"k.dtype={fmt_dtypes([k.dtype])} differs from q.dtype={fmt_dtypes([q.dtype])} "
                       "(supported: one dtype for q and k): cast k to q.dtype")
    if k.device != q.device:
        reasons.append(f"k.device={k.device} differs from q.device={q.device} (supported: one device): "
                       f"move k to {q.device}")
    if q.device.type == "cpu" and not interpret:
        reasons.append("device=cpu without TRITON_INTERPRET=1 (supported: cuda): move q/k to a GPU, set "
                       "TRITON_INTERPRET=1 before importing the kernel (tests only), or use impl='torch'")
    elif q.device.type not in ("cuda", "cpu"):
        reasons.append(f"device={q.device.type} (supported: {', '.join(devices)}): move q/k to a GPU, or "
                       "use impl='torch'")
    if D not in head_dims:
        reasons.append(f"head_dim={D} (supported: {fmt_ints(head_dims)}): use impl='torch'")
    if Dk != D:
        reasons.append(f"k.shape[3]={Dk} differs from q.shape[3]={D} (supported: equal head dims): pass matching q/k")
    if Bk != B:
        reasons.append(f"k.shape[0]={Bk} differs from q.shape[0]={B} (supported: equal batch): pass matching q/k")
    if Hkv < 1 or Hq % Hkv:
        reasons.append(f"Hkv={Hkv} does not divide Hq={Hq} (supported: GQA groups of equal size): check the "
                       "head counts")
    return reasons


def interpreted(jitted: object) -> bool:
    """True when ``jitted`` (a ``@triton.jit`` function) runs under Triton's interpreter: triton decides
    between interpreter and compiler when the function is decorated, i.e. at import."""
    if type(jitted).__name__ == "InterpretedFunction":
        return True
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
