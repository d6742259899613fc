"""sparsekit-keynorm: an example third-party sparsekit plugin.

It registers the ``keynorm`` estimator (query-independent "heavy key" block scores) and the ``keynorm``
preset (keynorm + fixed 25% budget + top-k mask + best kernel). sparsekit finds this module through the
``[project.entry-points.sparsekit]`` table of this package's pyproject.toml and calls the hooks below
once, at load; afterwards the pipeline calls the registered classes directly.
"""

from __future__ import annotations

from typing import Any, Callable

from sparsekit import hookimpl

from sparsekit_keynorm.estimator import KeyNormEstimator

__all__ = ["KeyNormEstimator", "PRESET"]
__version__ = "0.1.0"

PRESET: dict[str, Any] = {
    "estimator": {"name": "keynorm", "g": 1},
    "budget": {"name": "fixed", "ratio": 0.25},
    "mask": {"name": "topk"},
    "kernel": {"name": "auto"},
}


@hookimpl
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    """Register the ``keynorm`` estimator."""
    register(KeyNormEstimator)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    """Register the ``keynorm`` preset (needs the built-in ``fixed`` budget and ``topk`` mask)."""
    register("keynorm", PRESET, description="keynorm estimator + fixed budget (ratio=0.25) + topk mask + best kernel")
