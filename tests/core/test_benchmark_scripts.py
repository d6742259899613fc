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


def _check_targets():
    sys.path.insert(0, str(ROOT))
    try:
        import check_targets
    finally:
        sys.path.remove(str(ROOT))
    return check_targets


def test_check_targets_reads_each_result_kind(tmp_path, capsys):
    ct = _check_targets()
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-12-03"}
    kernel = {"meta": meta, "rows": [
        {"n": 131072, "impl": "flex_dense_causal", "density": 1.0, "ms": 350.0},
        {"n": 131072, "impl": "triton_block_sparse", "density": 1.0, "ms": 287.0, "tflops": 490.0,
         "within_target": True},
        {"n": 131072, "impl": "triton_block_sparse", "density": 0.1, "ms": 31.0, "tflops": 450.0,
         "within_target": True},
        {"n": 131072, "impl": "flex_block_sparse", "density": 0.1, "ms": 30.5},
        {"n": 131072, "impl": "triton_block_sparse", "density": 0.05, "ms": 17.2, "tflops": 420.0,
         "within_target": False},
    ]}
    planning = {"meta": meta, "rows": [
        {"shape": "llama-3.1-8b", "n": 32768, "impl": "plan_pct_of_dense", "plan_pct": 4.2},
        {"shape": "qwen2.5-7b", "n": 131072, "impl": "plan_pct_of_dense", "plan_pct": 3.1},
        {"n": 131072, "impl": "e2e_sdpa_cudnn_dense_causal", "ms": 250.0},
        {"n": 131072, "impl": "e2e_sdpa_flash_dense_causal", "ms": 420.0},
        {"n": 131072, "impl": "e2e_proxyattn_triton_gamma0.92", "ms": 29.0, "density": 0.094},
        {"n": 131072, "impl": "e2e_proxyattn_triton_gamma0.95", "ms": 45.0, "density": 0.141},
    ]}
    ttft = {"meta": {"gpu": "NVIDIA H200", "date": "2026-12-03"}, "results": [
        {"n": 131072, "config": "sdpa", "ttft_ms_median": 11600.0},
        {"n": 131072, "config": "sparsekit-fixed(ratio=0.1)", "ttft_ms_median": 4600.0, "density_mean": 0.101},
    ]}
    paths = {}
    for name, data in (("k", kernel), ("p", planning), ("t", ttft)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(__import__("json").dumps(data))
    assert ct.main(["--kernel", str(paths["k"]), "--planning", str(paths["p"]), "--ttft", str(paths["t"])]) == 0
    lines = capsys.readouterr().out.splitlines()

    def status(name):
        (line,) = [ln for ln in lines if name in ln]
        return line.split()[0] + ("" if line.split()[0] == "met" else " " + line.split()[1])

    assert status("kernel 128K density 1.0 TFLOP/s") == "met"
    assert status("kernel 128K density 1.0 vs Flex causal") == "met"
    assert status("kernel 128K density 0.1 vs Flex same layout") == "NOT met"  # 31.0 vs 30.5
    assert status("kernel 128K density 0.05 time rule") == "NOT met"
    assert status("kernel 128K density 0.1  ") == "NOT met"  # 31 ms, target < 30
    assert status("planning llama-3.1-8b 32K") == "met"
    assert status("planning qwen2.5-7b 128K") == "NOT met"
    assert status("e2e 128K density 0.094 vs cuDNN") == "met"  # 250 / 29 = 8.6x
    assert status("e2e 128K density 0.094 vs flash") == "met"  # 14.5x
    assert status("density 0.141 (outside the ~10% window) vs cuDNN") == "NOT met"
    assert status("TTFT 128K") == "met"
    assert any("targets are set on an H100" in ln for ln in lines)  # the H200 TTFT file is marked
    assert lines[-1] == "7 of 13 target rows met"


def test_check_targets_refuses_unreadable_files(tmp_path):
    ct = _check_targets()
    with pytest.raises(SystemExit) as exc:
        ct.main(["--kernel", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
