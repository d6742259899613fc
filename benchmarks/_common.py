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


def host_us(fn, calls: int = 200) -> float:
    """Host wall time per call of ``calls`` calls queued without synchronising (launcher Python + launch)."""
    import time

    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def graph_ms(fn, replays: int = 50) -> float | None:
    """Median GPU time of CUDA-graph replays of one ``fn()`` call (no host work in the timed region); None when
    ``fn`` cannot be captured."""
    import statistics

    import torch

    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
    except Exception as e:  # noqa: BLE001
        print(f"    graph capture failed: {type(e).__name__}: {e}"[:200])
        return None
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)
