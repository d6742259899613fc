"""MInference-style block top-k: the ``block_topk`` estimator and the ``block_topk`` preset."""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .estimator import BlockTopKEstimator

#: MInference's block_sparse default keeps 100 blocks of 64 tokens: 50 blocks of 128.
PRESET = {
    "estimator": {"name": "block_topk", "per": "head"},
    "budget": {"name": "fixed", "blocks": 50, "ratio": None},
    "mask": {"name": "topk"},
    "kernel": {"name": "auto"},
    "block_q": 128,
    "block_k": 128,
}


@hookimpl
def sparsekit_register_estimators(register: Callable[[type], None]) -> None:
    register(BlockTopKEstimator)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("block_topk", PRESET, description="mean-pooled block scores per head, top 50 blocks per q-block "
                                               "(sink and diagonal forced)")
