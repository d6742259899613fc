"""Repeat launches of a compiled Triton kernel without Triton's per-call argument binding.

``fn[grid](*args, **constexprs)`` (``JITFunction.run``) binds and specialises every argument on every call
(alignment of each pointer, divisibility of each integer), builds a cache key from them and looks the compiled
kernel up: on an H200 host that is ~38 of the ~56 us a launch of the 40-argument block-sparse kernel costs
(``benchmarks/results/launch_host_cost_before_h200_2026-12-03.json``), against ~18 us for the compiled kernel's own
launcher.

A :class:`Launch` is one specialisation of one kernel, created by a launcher for a *call key* of its own: a key
from which every argument's specialisation follows (tensor dtypes and 16-byte alignment, the exact integer values,
constexprs). Its first call goes through ``JITFunction.run`` (compiling when needed) and keeps the compiled kernel;
later calls hand the arguments straight to that kernel's launcher, with Triton's launch hooks and the current
stream, as ``JITFunction.run`` does after its cache lookup. The caller is responsible for the key: a
``Launch`` must only be reused for arguments that Triton would specialise the same way.

Falls back to ``fn[grid]`` on every call under the interpreter, when ``SPARSEKIT_FAST_LAUNCH=0`` is set, or when
this triton's compiled kernels do not have the expected launcher attributes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from ._checks import interpreted

#: False disables the direct path everywhere (``SPARSEKIT_FAST_LAUNCH=0`` in the environment)
FAST_LAUNCH: bool = os.environ.get("SPARSEKIT_FAST_LAUNCH", "1") not in ("0", "false", "False", "")


class Launch:
    """One kernel specialisation: ``launch(grid, args)`` runs ``fn[grid](*args, **constexprs, num_warps=...,
    num_stages=...)``, the first time through Triton's JIT and afterwards through the compiled kernel directly.

    ``args`` are the kernel's runtime (non-constexpr) parameters in signature order; the constexpr parameters must
    all follow them in the signature (checked; otherwise every call takes the JIT path).
    """

    __slots__ = ("fn", "constexprs", "num_warps", "num_stages", "compiled", "tail", "device", "_stream", "_rt")

    def __init__(self, fn: Any, constexprs: dict[str, Any], num_warps: int, num_stages: int | None,
                 device: int | None):
        self.fn = fn
        self.constexprs = constexprs
        self.num_warps = num_warps
        self.num_stages = num_stages  # None: triton's default
        self.device = device  # CUDA device index the kernel was compiled for (None: interpreter)
        self.compiled = None
        self.tail: tuple = ()
        self._stream = None
        self._rt = None  # triton.knobs.runtime (its launch hooks are read at every call)

    def __call__(self, grid: tuple[int, int, int], args: tuple) -> None:
        compiled = self.compiled
        if compiled is None:
            opts = {"num_warps": self.num_warps}
            if self.num_stages is not None:
                opts["num_stages"] = self.num_stages
            compiled = self.fn[grid](*args, **self.constexprs, **opts)
            self._keep(compiled, len(args))
            return
        rt = self._rt
        stream = self._stream(self.device)
        meta = compiled.launch_metadata(grid, stream, *args, *self.tail)
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, meta,
                     rt.launch_enter_hook, rt.launch_exit_hook, *args, *self.tail)

    def _keep(self, compiled: Any, n_args: int) -> None:
        """Keep ``compiled`` for direct launches when this triton and the kernel's signature allow it."""
        if not FAST_LAUNCH or self.device is None or interpreted(self.fn) or compiled is None:
            return
        names = list(self.fn.arg_names)
        constexpr_names = {names[i] for i in self.fn.constexprs}
        tail = set(names[n_args:])  # must be exactly the constexprs passed, all of them constexpr parameters
        if constexpr_names.intersection(names[:n_args]) or tail != set(self.constexprs) or tail - constexpr_names:
            return
        try:
            self._stream = _stream_getter()
            self._rt = _knobs().runtime
            compiled.run, compiled.function, compiled.packed_metadata  # noqa: B018  (attributes the path needs)
        except Exception:  # noqa: BLE001 - an older / newer triton without them: keep the JIT path
            return
        self.tail = tuple(self.constexprs[n] for n in names[n_args:])
        self.compiled = compiled


def _arg_key(a: Any) -> Any:
    """What Triton's specialisation of one runtime argument can depend on, or finer: a tensor's dtype and 16-byte
    alignment, an integer's exact value, a bool's value, a float's type (floats are not specialised), None."""
    if isinstance(a, torch.Tensor):
        return a.dtype, not a.data_ptr() & 15
    t = type(a)
    if t is int or a is None:
        return a
    if t is bool:
        return "bool", a
    if t is float:
        return float
    raise TypeError(f"no launch key for a {t.__name__}")


#: Launch objects of ``launch``, per kernel and call key (each dict cleared when it exceeds ``LAUNCHES_MAX``)
_LAUNCHES: dict[int, dict[tuple, Launch]] = {}
LAUNCHES_MAX = 256


def launch(fn: Any, grid: tuple[int, ...], args: tuple, constexprs: dict[str, Any], *, num_warps: int,
           num_stages: int | None = None, device: Any) -> None:
    """``fn[grid](*args, **constexprs, num_warps=..., num_stages=...)`` on ``device`` (a ``torch.device``; it must
    be the current CUDA device), through a ``Launch`` kept per kernel and per key of the arguments (``_arg_key``
    of each, the constexprs, warps, stages and device): repeated calls skip Triton's argument binding. Off CUDA,
    with ``FAST_LAUNCH`` off or an argument without a key, every call takes ``fn[grid]``."""
    grid = tuple(grid) + (1,) * (3 - len(grid))
    if device.type != "cuda" or not FAST_LAUNCH:
        key = None
    else:
        try:
            key = (device.index, num_warps, num_stages, tuple(constexprs.items()), *map(_arg_key, args))
        except TypeError:
            key = None
    if key is None:
        Launch(fn, constexprs, num_warps, num_stages, None)(grid, args)
        return
    cache = _LAUNCHES.setdefault(id(fn), {})
    entry = cache.get(key)
    if entry is None:
        if len(cache) >= LAUNCHES_MAX:
            cache.clear()
        entry = cache[key] = Launch(fn, constexprs, num_warps, num_stages, device_index(device))
    entry(grid, args)


def on_device(device: Any) -> Any:
    """A context making ``device`` the current CUDA device, or a no-op when it already is (or is not CUDA)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _stream_getter():
    """``(device index) -> current raw stream``, as ``JITFunction.run`` gets it."""
    from triton.runtime import driver

    return driver.active.get_current_stream


def _knobs():
    from triton import knobs  # triton >= 3.4

    return knobs


def device_index(device: Any) -> int | None:
    """The CUDA device index of a ``torch.device`` (the current device when it has none); None off CUDA."""
    if device.type != "cuda":
        return None
    if device.index is not None:
        return device.index
    return torch.cuda.current_device()
