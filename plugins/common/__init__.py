"""Reusable stages: the ``topk`` mask, the ``fixed`` budget and the plain-torch ``torch`` kernel."""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .budgets import FixedBudget
from .cumulative import CumulativeBudget, CumulativeMask
from .kernels import TorchKernel
from .masks import TopKMask


@hookimpl
def sparsekit_register_budgeters(register: Callable[[type], None]) -> None:
    register(FixedBudget)
    register(CumulativeBudget)


@hookimpl
def sparsekit_register_masks(register: Callable[[type], None]) -> None:
    register(TopKMask)
    register(CumulativeMask)


@hookimpl
def sparsekit_register_kernels(register: Callable[[type], None]) -> None:
    register(TorchKernel)
