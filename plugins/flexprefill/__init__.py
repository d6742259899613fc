"""FlexPrefill (arXiv 2502.20766): ``flexprefill`` estimator and the ``flexprefill`` preset (with the shared
``cumulative`` budget and mask)."""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .estimator import FlexPrefillEstimator

PRESET = {
    "estimator": {"name": "flexprefill", "tau": 0.1, "pattern": "auto"},
    "budget": {"name": "cumulative", "gamma": 0.9, "min_budget": 1024, "max_budget": 0},
    "mask": {"name": "cumulative"},
    "kernel": {"name": "auto"},
    "block_q": 128,
    "block_k": 128,
}


@hookimpl
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    register(FlexPrefillEstimator)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("flexprefill", PRESET, description="FlexPrefill: per-head query-aware / vertical-slash by JS distance "
                                                "(tau=0.1), cumulative gamma=0.9, min_budget=1024, block 128")
