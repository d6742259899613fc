"""Every Triton launch compiles for the GPU (sm_90), checked on a machine without one.

The interpreter tests run the kernels' code without compiling it; ``sparsekit.kernels._compile_check`` records
the launches of the whole GPU path (planning stages, attention, the heavy kernels at model sizes and their
config variants) and compiles each with Triton for sm_90, as the device would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: the @triton.jit entry points sparsekit launches; each must be among the compiled launches
KERNELS = {"_proxy_scores_fwd", "_proxy_query", "_proxy_stats_split", "_proxy_pool_split", "_lbm_row_stats",
           "_lbm_block_mass", "_mass_budget", "_topk_rank", "_topk_select", "_topk_compact",
           "_block_sparse_attn_fwd"}


def _nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return os.path.exists(get_ptxas(90).path)
    except Exception:
        return False


@pytest.mark.skipif(not _nvidia_backend(), reason="triton without its CUDA backend / ptxas")
def test_every_launch_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "compiled.json"
    res = subprocess.run([sys.executable, "-m", "sparsekit.kernels._compile_check", "--launches",
                          str(tmp_path / "launches.json"), "--json", str(report)],
                         env=env, capture_output=True, text=True, timeout=900)
    rows = json.loads(report.read_text()) if report.exists() else []
    errors = [f"{r['label']} {r['kernel']}: {r['error']}" for r in rows if "error" in r]
    assert res.returncode == 0 and not errors, "\n".join(errors) or res.stderr[-3000:]
    assert {r["kernel"] for r in rows} == KERNELS
    labels = {r["label"] for r in rows}
    assert {"qwen2.5-7b 32K block_sparse tma host", "qwen2.5-7b 32K block_sparse tma device",
            "topk_rank 1024 blocks narrow=2", "llama-3.1-8b 32K proxy_scores"} <= labels
    # the Qwen 32K score launch is the across-groups order; every launch reports its registers
    qwen = [r for r in rows if r["label"] == "qwen2.5-7b 32K proxy_scores"]
    assert qwen and qwen[0]["constexprs"]["ACROSS_GROUPS"] is True
    assert all(isinstance(r["registers"], int) for r in rows)


def test_record_step_refuses_to_run_compiled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "sparsekit.kernels._compile_check", "--step", "record"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "TRITON_INTERPRET=1" in res.stderr


def test_compile_step_refuses_the_interpreter_before_recording(tmp_path):
    launches = tmp_path / "launches.json"
    res = subprocess.run([sys.executable, "-m", "sparsekit.kernels._compile_check", "--launches", str(launches)],
                         env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "without TRITON_INTERPRET" in res.stderr
    assert not launches.exists()  # refused before the record step ran
