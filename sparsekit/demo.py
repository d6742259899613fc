"""``sparsekit demo``: ProxyAttn on a built-in synthetic long-context workload, against dense attention."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .build import build
from .metrics import attention_recall, relative_error
from .workloads import SyntheticWorkload


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall time (ms) of ``repeats`` calls after one warm-up; returns the last result too."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2], out


def run_demo(n: int | None = None, *, preset: str = "proxyattn", heads: int | None = None, kv_heads: int | None = None,
             head_dim: int = 128, device: str | None = None, kernel: str | None = None, seed: int = 0,
             repeats: int | None = None) -> dict[str, Any]:
    """Plan and attend with ``preset`` on a synthetic workload; compare with dense SDPA. Returns the figures."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = dev.type == "cuda"
    n = n or (32768 if gpu else 16384)
    heads = heads or (32 if gpu else 8)
    kv_heads = kv_heads or (8 if gpu else 2)
    dtype = torch.bfloat16 if gpu else torch.float32
    repeats = repeats or (10 if gpu else 1)
    q, k, v = SyntheticWorkload(n=n, heads=heads, kv_heads=kv_heads, head_dim=head_dim, seed=seed).generate(dtype, dev)
    attn = build(preset, **({"kernel": kernel} if kernel else {}))

    plan_ms, plan = _time(lambda: attn.plan(q, k, timed=False), dev, repeats)
    attend_ms, out = _time(lambda: attn.run(plan, v), dev, repeats)
    g = heads // kv_heads

    def dense() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                                                is_causal=True)

    dense_ms, ref = _time(dense, dev, repeats)
    kernel_used = plan.info["kernel_name"]  # recorded by attn.run
    return {
        "preset": attn.name, "kernel": kernel_used, "device": torch.cuda.get_device_name() if gpu else "cpu",
        "shape": f"B=1 Hq={heads} Hkv={kv_heads} N={n} D={head_dim} {str(dtype).replace('torch.', '')}",
        "density": plan.density, "recall": attention_recall(q, k, plan.layout, rows=128),
        "rel_error": relative_error(out, ref), "plan_ms": plan_ms, "attend_ms": attend_ms,
        "sparse_total_ms": plan_ms + attend_ms, "dense_sdpa_ms": dense_ms,
        "speedup": dense_ms / (plan_ms + attend_ms),
    }


def print_demo(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sparsekit demo — {result['shape']} on {result['device']}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("pipeline", result["preset"]), ("kernel", result["kernel"]),
            ("density (kept / causal blocks)", f"{result['density']:.3f}"),
            ("attention recall", f"{result['recall']:.4f}"),
            ("output relative error vs dense", f"{result['rel_error']:.4f}"),
            ("planning", f"{result['plan_ms']:.1f} ms"), ("sparse attention", f"{result['attend_ms']:.1f} ms"),
            ("dense SDPA", f"{result['dense_sdpa_ms']:.1f} ms"),
            ("speedup (dense / (plan + sparse))", f"{result['speedup']:.2f}x")]
    for r in rows:
        table.add_row(*r)
    Console().print(table)
