"""ProxyAttn (arXiv 2509.24745): ``proxy`` estimator, ``dynamic`` budget and the ``proxyattn`` preset."""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .budget import DynamicBudget
from .estimator import ProxyEstimator

PRESET = {
    "estimator": {"name": "proxy", "g": 1, "stride": 4},
    "budget": {"name": "dynamic", "gamma": 0.95, "min_budget": 2048},
    "mask": {"name": "topk"},
    "kernel": {"name": "auto"},
    "block_q": 128,
    "block_k": 128,
}


@hookimpl
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    register(ProxyEstimator)


@hookimpl
def sparsekit_register_budgeters(register: Callable[[type], None]) -> None:
    register(DynamicBudget)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("proxyattn", PRESET, description="ProxyAttn with the paper's defaults (g=1, stride=4, gamma=0.95, "
                                              "min_budget=2048, block 128) and the best kernel available")
