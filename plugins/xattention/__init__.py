"""XAttention (arXiv 2503.16428): ``xattention`` estimator and the ``xattention`` preset (with the shared
``cumulative`` budget and mask)."""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .estimator import XAttentionEstimator

PRESET = {
    "estimator": {"name": "xattention", "stride": 8},
    "budget": {"name": "cumulative", "gamma": 0.9},
    "mask": {"name": "cumulative"},
    "kernel": {"name": "auto"},
    "block_q": 128,
    "block_k": 128,
}


@hookimpl
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    register(XAttentionEstimator)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("xattention", PRESET, description="XAttention: antidiagonal scores (stride 8), per-row cumulative "
                                               "threshold 0.9, block 128, best kernel available")
