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


def shape_problem(B: int, Hq: int, Nq: int, Nk: int, bq: int, bk: int, causal: bool, q_lens=None, k_lens=None, *,
                  D: int = 2, device: str = "cpu"):
    """An ``AttentionProblem`` for stages that read only its geometry (masks): tiny q/k (``D`` wide, one KV head),
    per-sequence lengths as lists."""
    from sparsekit import AttentionProblem

    q = torch.zeros(B, Hq, Nq, D, device=device)
    k = torch.zeros(B, 1, Nk, D, device=device)
    ql = None if q_lens is None else torch.tensor(q_lens, device=device)
    kl = None if k_lens is None else torch.tensor(k_lens, device=device)
    return AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal, q_lens=ql, k_lens=kl)


@pytest.fixture
def device() -> str:
    return DEVICE
