"""Environment and plugin report: ``python -m sparsekit.info`` (also ``sparsekit list``)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import attrs
import torch

from .problem import AttentionProblem
from .registry import Registry, get_registry
from .stages import STAGE_KINDS, Kernel


def _default(f: attrs.Attribute) -> Any:
    d = f.default
    return d.factory() if isinstance(d, attrs.Factory) else d  # type: ignore[attr-defined]


def probe_devices() -> list[str]:
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


def kernel_status(kernel: Kernel, device: str) -> list[str]:
    """Why ``kernel`` cannot run a small bf16 (fp32 on CPU) problem on ``device`` ([] if it can)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(1, 4, 128, 64, device=device, dtype=dtype)
    k = torch.randn(1, 1, 128, 64, device=device, dtype=dtype)
    problem = AttentionProblem.create(q, k, k)
    return kernel.not_supported_reasons(problem, k, None)


def report(registry: Registry | None = None) -> dict[str, Any]:
    """Everything ``sparsekit list`` shows, as plain data."""
    reg = registry or get_registry()
    versions = {}
    for pkg in ("sparsekit-attn", "torch", "triton", "pluggy", "attrs", "transformers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    env = {"python": platform.python_version(), "versions": versions, "devices": probe_devices(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    stages: dict[str, list[dict[str, Any]]] = {}
    for kind in STAGE_KINDS:
        rows = []
        for name in reg.names(kind):
            entry = reg.stages[kind][name]
            row: dict[str, Any] = {
                "name": name, "plugin": entry.plugin, "source": reg.sources.get(entry.plugin, ""),
                "options": {f.name: _default(f) for f in entry.cls.option_fields()},
                "description": entry.cls.description,
            }
            if kind == "kernel":
                kernel = entry.cls.create()
                row["capabilities"] = kernel.capabilities.describe()  # type: ignore[attr-defined]
                row["priority"] = kernel.priority  # type: ignore[attr-defined]
                row["runs_here"] = {d: kernel_status(kernel, d) for d in env["devices"]}  # type: ignore[arg-type]
            rows.append(row)
        stages[kind] = rows
    presets = [{"name": p.name, "plugin": p.plugin, "description": p.description, "config": p.config}
               for p in sorted(reg.presets.values(), key=lambda p: p.name)]
    failures = [{"plugin": f.plugin, "error": f.error} for f in reg.failures]
    return {"environment": env, "stages": stages, "presets": presets, "failures": failures}


def print_report(registry: Registry | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    data = report(registry)
    con = Console()
    env = data["environment"]
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    con.print(f"[bold]sparsekit[/bold] — python {env['python']}, {vers}; devices: {', '.join(env['devices'])}"
              + (f" ({env['gpu']})" if env["gpu"] else ""))
    for kind, rows in data["stages"].items():
        table = Table(title=f"{kind} stages", title_justify="left")
        for col in ("name", "plugin", "options (defaults)", "description"):
            table.add_column(col)
        if kind == "kernel":
            table.add_column("runs here?")
        for row in rows:
            opts = ", ".join(f"{k}={v!r}" for k, v in row["options"].items()) or "-"
            cells = [row["name"], row["plugin"], opts, row["description"]]
            if kind == "kernel":
                cells[3] += f"\n[dim]{row['capabilities']}[/dim]"
                status = []
                for dev, reasons in row["runs_here"].items():
                    status.append(f"{dev}: yes" if not reasons else f"{dev}: no — " + "; ".join(reasons))
                cells.append("\n".join(status))
            table.add_row(*cells)
        con.print(table)
    table = Table(title="presets", title_justify="left")
    for col in ("name", "plugin", "description"):
        table.add_column(col)
    for p in data["presets"]:
        table.add_row(p["name"], p["plugin"], p["description"])
    con.print(table)
    if data["failures"]:
        table = Table(title="plugins that failed to load", title_justify="left", style="red")
        table.add_column("plugin")
        table.add_column("error")
        for f in data["failures"]:
            table.add_row(f["plugin"], f["error"])
        con.print(table)


if __name__ == "__main__":
    print_report()
