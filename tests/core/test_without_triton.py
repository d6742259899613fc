"""A plain install (no triton) must load every built-in plugin and run ProxyAttn on the CPU."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["triton"] = None  # as if triton were not installed: any import of it fails
import torch, sparsekit
reg = sparsekit.get_registry()
assert not reg.failures, reg.failures
attn = sparsekit.build("proxyattn", block_q=32, block_k=32)
q = torch.randn(1, 4, 256, 32); k = torch.randn(1, 2, 256, 32)
out, plan = attn(q, k, k, return_plan=True)
assert out.shape == q.shape
kernel = attn.select_kernel(plan.problem, k, plan.layout).name
assert kernel in ("torch", "sdpa"), kernel
from sparsekit.info import report
triton_row = next(r for r in report()["stages"]["kernel"] if r["name"] == "triton")
assert "triton is not installed" in triton_row["runs_here"]["cpu"][0]
print("ok", kernel)
"""


def test_builtins_load_and_run_without_triton():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")
