"""MInference-style vertical-slash: the ``vertical_slash`` estimator and the ``vertical_slash`` preset.

See ``docs/strategies/vertical_slash.md`` for the mapping of token-level vertical/slash scores onto blocks.
"""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .estimator import VerticalSlashEstimator

#: ~ MInference's Llama-3 budget (1000 vertical + 6096 slash tokens) in 128-token blocks.
PRESET = {
    "estimator": {"name": "vertical_slash", "last_q": 64},
    "budget": {"name": "fixed", "blocks": 56, "ratio": None},
    "mask": {"name": "topk"},
    "kernel": {"name": "auto"},
    "block_q": 128,
    "block_k": 128,
}


@hookimpl
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    register(VerticalSlashEstimator)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("vertical_slash", PRESET, description="MInference-style vertical+slash scores (last_q=64), "
                                                   "top 56 blocks per q-block (sink and diagonal forced)")
