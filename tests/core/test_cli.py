"""The command line: `sparsekit list`, `sparsekit demo`, `python -m sparsekit.info`."""

from __future__ import annotations

import json
import subprocess
import sys

from sparsekit.cli import main


def test_list_shows_stages_plugins_options_and_whether_they_run(capsys):
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    proxy = next(r for r in data["stages"]["estimator"] if r["name"] == "proxy")
    assert proxy["plugin"] == "proxyattn" and proxy["options"]["stride"] == 4
    assert proxy["source"].startswith("entry point sparsekit.plugins.proxyattn")
    torch_k = next(r for r in data["stages"]["kernel"] if r["name"] == "torch")
    assert torch_k["runs_here"]["cpu"] == []
    assert any(p["name"] == "proxyattn" for p in data["presets"])


def test_list_renders_a_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "estimator stages" in out and "proxyattn" in out and "runs here?" in out


def test_info_module_runs():
    res = subprocess.run([sys.executable, "-m", "sparsekit.info"], capture_output=True, text=True, check=True)
    assert "proxy" in res.stdout and "dynamic" in res.stdout


def test_demo_small(capsys):
    assert main(["demo", "--n", "2048", "--heads", "4", "--kv-heads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["density"] <= 1 and res["recall"] > 0.9 and res["rel_error"] < 0.2
    import sparsekit

    assert res["kernel"] in sparsekit.get_registry().names("kernel")


def test_errors_exit_2_with_a_message(capsys):
    assert main(["demo", "--preset", "nope", "--n", "256"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
