"""Registration hooks. Each is called once when plugins load; ``register`` is a plain function."""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "sparsekit"
ENTRY_POINT_GROUP = "sparsekit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    """Register estimator classes: call ``register(EstimatorClass)`` once per class."""


@hookspec
def sparsekit_register_budgeters(register: Callable[[type], None]) -> None:
    """Register budgeter classes: call ``register(BudgeterClass)`` once per class."""


@hookspec
def sparsekit_register_masks(register: Callable[[type], None]) -> None:
    """Register mask-builder classes: call ``register(MaskBuilderClass)`` once per class."""


@hookspec
def sparsekit_register_kernels(register: Callable[[type], None]) -> None:
    """Register kernel classes: call ``register(KernelClass)`` once per class."""


@hookspec
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    """Register presets: call ``register(name, config: dict, description="")``."""


HOOKS: dict[str, str] = {
    "estimator": "sparsekit_register_estimators",
    "budget": "sparsekit_register_budgeters",
    "mask": "sparsekit_register_masks",
    "kernel": "sparsekit_register_kernels",
}


