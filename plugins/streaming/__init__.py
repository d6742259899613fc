"""Streaming / A-shape attention: the ``streaming`` mask builder and the ``streaming`` preset."""

from __future__ import annotations

from typing import Callable

from sparsekit.hookspecs import hookimpl

from .mask import StreamingMask

PRESET = {
    "estimator": None,
    "budget": None,
    "mask": {"name": "streaming", "sink_blocks": 1, "local_blocks": 8},
    "kernel": {"name": "auto"},
    "block_q": 128,
    "block_k": 128,
}


@hookimpl
def sparsekit_register_masks(register: Callable[[type], None]) -> None:
    register(StreamingMask)


@hookimpl
def sparsekit_register_presets(register: Callable[..., None]) -> None:
    register("streaming", PRESET, description="A-shape: 1 sink block + 8 local blocks ending at the diagonal "
                                              "(no estimation)")
