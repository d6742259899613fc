"""Tests of ``sparsekit.kernels._launch.Launch`` with stand-ins for a jitted function and its compiled kernel (the
direct path exists on a GPU only; ``tests/kernels/test_block_sparse.py::test_direct_launch_matches_jit_launch``
runs it for real)."""

from __future__ import annotations

import types

import pytest

from sparsekit.kernels import _launch


class FakeCompiled:
    function = "fn-handle"
    packed_metadata = ("meta",)

    def __init__(self):
        self.runs = []

    def launch_metadata(self, grid, stream, *args):
        return ("launch-meta", grid, stream, len(args))

    def run(self, *call):
        self.runs.append(call)


class FakeJit:
    """``fn[grid](*args, **kw)`` records the call and returns the compiled kernel, as ``JITFunction.run`` does."""

    def __init__(self, names, constexpr_pos):
        self.arg_names = names
        self.constexprs = constexpr_pos
        self.compiled = FakeCompiled()
        self.jit_calls = []

    def __getitem__(self, grid):
        def call(*args, **kw):
            self.jit_calls.append((grid, args, kw))
            return self.compiled
        return call


@pytest.fixture
def compiled_mode(monkeypatch):
    monkeypatch.setattr(_launch, "interpreted", lambda fn: False)
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(_launch, "_stream_getter", lambda: (lambda device: f"stream{device}"))
    hooks = types.SimpleNamespace(launch_enter_hook="enter", launch_exit_hook="exit")
    monkeypatch.setattr(_launch, "_knobs", lambda: types.SimpleNamespace(runtime=hooks))
    return hooks


def test_first_call_jit_then_direct(compiled_mode):
    fn = FakeJit(["X", "n", "BLOCK", "FLAG"], [2, 3])
    launch = _launch.Launch(fn, dict(FLAG=True, BLOCK=64), num_warps=4, num_stages=2, device=1)
    launch((3, 1, 1), ("x0", 10))
    assert fn.jit_calls == [((3, 1, 1), ("x0", 10), dict(FLAG=True, BLOCK=64, num_warps=4, num_stages=2))]
    launch((5, 2, 1), ("x1", 11))
    assert len(fn.jit_calls) == 1  # no second JIT call
    (run,) = fn.compiled.runs
    # grid, stream of the kernel's device, handle, metadata, hooks, then every parameter in signature order
    assert run == (5, 2, 1, "stream1", "fn-handle", ("meta",), ("launch-meta", (5, 2, 1), "stream1", 4),
                   "enter", "exit", "x1", 11, 64, True)
    compiled_mode.launch_enter_hook = None  # hooks are read at every call (a profiler may set them later)
    launch((1, 1, 1), ("x2", 12))
    assert fn.compiled.runs[1][7] is None


@pytest.mark.parametrize("names, pos", [
    (["X", "BLOCK", "n", "FLAG"], [1, 3]),  # a constexpr before a runtime parameter
    (["X", "n", "BLOCK", "OTHER"], [2, 3]),  # a constexpr the launch does not pass
])
def test_signatures_it_cannot_bind_keep_the_jit_path(compiled_mode, names, pos):
    fn = FakeJit(names, pos)
    launch = _launch.Launch(fn, dict(FLAG=True, BLOCK=64), num_warps=4, num_stages=2, device=0)
    for _ in range(3):
        launch((1, 1, 1), ("x", 1))
    assert len(fn.jit_calls) == 3 and not fn.compiled.runs


def test_jit_path_when_disabled_interpreted_or_off_cuda(compiled_mode, monkeypatch):
    fn = FakeJit(["X", "n", "BLOCK"], [2])
    _launch.Launch(fn, dict(BLOCK=64), 4, 2, device=None)((1, 1, 1), ("x", 1))  # no CUDA device
    monkeypatch.setattr(_launch, "FAST_LAUNCH", False)
    launch = _launch.Launch(fn, dict(BLOCK=64), 4, 2, device=0)
    launch((1, 1, 1), ("x", 1))
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(_launch, "interpreted", lambda fn: True)
    launch2 = _launch.Launch(fn, dict(BLOCK=64), 4, 2, device=0)
    launch2((1, 1, 1), ("x", 1))
    launch((1, 1, 1), ("x", 1))
    launch2((1, 1, 1), ("x", 1))
    assert len(fn.jit_calls) == 5 and not fn.compiled.runs


def test_triton_without_launcher_attributes_keeps_the_jit_path(compiled_mode, monkeypatch):
    def broken():
        raise AttributeError("no driver.active.get_current_stream")

    monkeypatch.setattr(_launch, "_stream_getter", broken)
    fn = FakeJit(["X", "n", "BLOCK"], [2])
    launch = _launch.Launch(fn, dict(BLOCK=64), 4, 2, device=0)
    launch((1, 1, 1), ("x", 1))
    launch((1, 1, 1), ("x", 1))
    assert len(fn.jit_calls) == 2


def test_launch_keys_on_what_triton_specialises(compiled_mode, monkeypatch):
    import torch

    monkeypatch.setattr(_launch, "_LAUNCHES", {})
    fn = FakeJit(["X", "n", "flag", "s", "BLOCK"], [4])
    cuda0 = torch.device("cuda", 0)
    x = torch.zeros(64)
    x_off = x[1:]  # 4 bytes into the storage: another alignment class

    def call(*args):
        _launch.launch(fn, (2,), args, dict(BLOCK=16), num_warps=4, device=cuda0)

    call(x, 7, True, 0.5)
    call(torch.ones(64), 7, True, 0.25)  # same dtype and alignment, another float value: same specialisation
    assert len(fn.jit_calls) == 1 and len(fn.compiled.runs) == 1
    assert fn.compiled.runs[0][:3] == (2, 1, 1)  # grid padded to three dims
    for args in ((x_off, 7, True, 0.5), (x, 8, True, 0.5), (x, 7, 1, 0.5), (x.double(), 7, True, 0.5)):
        call(*args)  # alignment, integer value, bool vs int, dtype: each its own specialisation
    assert len(fn.jit_calls) == 5
    assert len(_launch._LAUNCHES[id(fn)]) == 5
    _launch.launch(fn, (2,), (x, 7, True, 0.5), dict(BLOCK=32), num_warps=4, device=cuda0)  # constexprs
    _launch.launch(fn, (2,), (x, 7, True, 0.5), dict(BLOCK=16), num_warps=8, device=cuda0)  # warps
    assert len(fn.jit_calls) == 7
    call(x, 7, True, [0.5])  # an argument without a key: Triton's path every time, nothing kept
    call(x, 7, True, [0.5])
    assert len(fn.jit_calls) == 9 and len(_launch._LAUNCHES[id(fn)]) == 7
    _launch.launch(fn, (2,), (x, 7, True, 0.5), dict(BLOCK=16), num_warps=4, device=torch.device("cpu"))
    assert len(fn.jit_calls) == 10  # off CUDA: the JIT (interpreter) path


def test_launch_cache_is_bounded(compiled_mode, monkeypatch):
    import torch

    monkeypatch.setattr(_launch, "_LAUNCHES", {})
    monkeypatch.setattr(_launch, "LAUNCHES_MAX", 3)
    fn = FakeJit(["n", "BLOCK"], [1])
    for n in range(7):
        _launch.launch(fn, (1,), (n,), dict(BLOCK=16), num_warps=4, device=torch.device("cuda", 0))
    assert len(_launch._LAUNCHES[id(fn)]) <= 3
