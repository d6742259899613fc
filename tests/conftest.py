"""Shared test setup. Triton runs under its CPU interpreter when no GPU is present; the variable must be
set before any ``@triton.jit`` function is defined, hence here, before the test modules import anything."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# tests run in parallel workers (pytest -n 2 on 2 cores): one intra-op thread each avoids oversubscription,
# which makes tiny ops ~1000x slower
torch.set_num_threads(1)


def tolerance(out: torch.Tensor, naive: torch.Tensor, ref: torch.Tensor, floor: float = 1e-6) -> float:
    """Allowed max error of ``out`` against the fp64 ``ref``: twice the error plain torch makes in the same
    dtype (``naive``), plus a small floor (flash-attention's rule)."""
    return 2 * float((naive.double() - ref.double()).abs().max()) + floor


@pytest.fixture
def device() -> str:
    return DEVICE
