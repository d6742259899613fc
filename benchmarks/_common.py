"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so imported as ``_common``)."""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any


def parse_n(s: str) -> int:
    """A token count: ``"8k"`` -> 8192, ``"1m"`` -> 1048576, ``"131072"`` -> 131072."""
    s = s.strip().lower()
    if s.endswith("m"):
        return int(s[:-1]) << 20
    return int(s[:-1]) * 1024 if s.endswith("k") else int(s)


def device_meta(**extra: Any) -> dict[str, Any]:
    """What every result file records: the GPU, torch / CUDA / triton / Python versions and the UTC date, plus
    ``extra``."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
