"""The benchmark scripts run only on the device machine; here each one must at least import and print its
``--help`` on a CPU (a broken import or argument table would otherwise cost a device call to find)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p for p in [*ROOT.glob("*.py"), *ROOT.glob("probes/*.py")]
                 if not p.name.startswith("_") and "argparse" in p.read_text())


def test_the_scripts_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"bench_kernel.py", "bench_planning.py", "bench_ttft.py", "bench_proxy_split.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])  # as `python <script>` would
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_common_helpers():
    sys.path.insert(0, str(ROOT))
    try:
        from _common import device_meta, parse_n
    finally:
        sys.path.remove(str(ROOT))
    assert [parse_n(s) for s in ("8k", "128K", "1m", "131072", " 32k ")] == [8192, 131072, 1 << 20, 131072, 32768]
    meta = device_meta(extra=1)
    assert {"gpu", "torch", "triton", "python", "date", "cuda"} <= set(meta) and meta["extra"] == 1
