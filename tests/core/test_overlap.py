"""The budget beside the estimate (``SparseAttention.overlap_budget``): when it applies, the order of the stream
operations it issues, and (on a GPU) that an overlapped plan equals the sequential one bit for bit."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

import sparsekit
from sparsekit import pipeline as pl
from sparsekit.plugins.common.budgets import FixedBudget
from sparsekit.plugins.common.cumulative import CumulativeBudget
from sparsekit.plugins.proxyattn.budget import DynamicBudget


def qk(B=1, Hq=4, Hkv=2, N=512, D=32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g)
    return q.to(device), k.to(device)


def test_builtin_budgets_declare_whether_they_read_scores():
    assert DynamicBudget.reads_scores is False and FixedBudget.reads_scores is False
    assert CumulativeBudget.reads_scores is True  # needs the scores: never beside the estimate
    assert sparsekit.Budgeter.reads_scores is True  # a third-party budgeter keeps the order unless it says so


def test_overlap_applies_only_on_cuda_without_capture_and_when_declared(monkeypatch):
    attn = sparsekit.build("proxyattn", block_q=64, block_k=64)
    q, k = qk()
    assert attn.overlap_budget is False  # opt-in
    attn.overlap_budget = True
    assert not attn._overlap_ok(attn.problem(q, k))  # CPU tensors
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    on_cuda = SimpleNamespace(device=torch.device("cuda", 0), is_varlen=False)
    varlen = SimpleNamespace(device=torch.device("cuda", 0), is_varlen=True)
    assert attn._overlap_ok(on_cuda)
    assert not attn._overlap_ok(varlen)  # both run per sequence there: block bounds on both streams
    capturing[0] = True
    assert not attn._overlap_ok(on_cuda)  # never while a CUDA graph is captured
    capturing[0] = False
    attn.overlap_budget = False
    assert not attn._overlap_ok(on_cuda)
    attn.overlap_budget = True

    class Reader(sparsekit.Budgeter):
        name: ClassVar[str] = "reader"

    attn.budgeter = Reader()  # reads_scores defaults to True: estimate, then budget
    assert not attn._overlap_ok(on_cuda)
    fixed = sparsekit.build("proxyattn", budget="fixed(ratio=0.2)")
    fixed.overlap_budget = True
    assert fixed._overlap_ok(on_cuda)
    assert not fixed._overlap_ok(varlen)  # fixed takes the whole batch, the proxy estimator one sequence at a time
    streaming = sparsekit.build("streaming")  # no estimator: nothing to overlap
    streaming.overlap_budget = True
    assert streaming.estimator is None and not streaming._overlap_ok(on_cuda)


class _FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits for {other.name}")

    def record_event(self):
        self.log.append(f"event on {self.name}")
        return f"event of {self.name}"

    def wait_event(self, event):
        self.log.append(f"{self.name} waits for the {event}")


def test_overlapped_plan_orders_the_streams(monkeypatch):
    """With the stream calls replaced by recorders (CPU): the high-priority stream waits for an event recorded on
    the current one, the estimate is issued inside its context, then the budget on the current stream, which
    waits for the estimate's stream before the mask; the plan equals the sequential one."""
    log: list[str] = []
    main, fast = _FakeStream("main", log), _FakeStream("fast", log)
    current = [main]

    @contextmanager
    def use(stream):
        current.append(stream)
        log.append(f"enter {stream.name}")
        try:
            yield
        finally:
            current.pop()
            log.append(f"leave {stream.name}")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(pl, "_priority_stream", lambda device: fast)
    attn = sparsekit.build("proxyattn", budget={"gamma": 0.9, "min_budget": 0}, block_q=64, block_k=64)
    attn.overlap_budget = True
    est, bud = attn.estimator, attn.budgeter
    orig_est, orig_bud = type(est).estimate, type(bud).allocate

    def estimate(self, problem):
        log.append(f"estimate on {current[-1].name}")
        return orig_est(self, problem)

    def allocate(self, problem, scores):
        log.append(f"budget on {current[-1].name} scores={scores is not None}")
        return orig_bud(self, problem, scores)

    monkeypatch.setattr(type(est), "estimate", estimate)
    monkeypatch.setattr(type(bud), "allocate", allocate)
    q, k = qk(seed=3)
    want = attn.plan(q, k, timed=False)  # CPU: sequential
    assert log == ["estimate on main", "budget on main scores=True"]
    log.clear()
    monkeypatch.setattr(pl.SparseAttention, "_overlap_ok", lambda self, problem: True)
    got = attn.plan(q, k, timed=False)
    assert log == ["event on main", "fast waits for the event of main", "enter fast", "estimate on fast",
                   "leave fast", "budget on main scores=False", "main waits for fast"]
    assert torch.equal(got.layout.kv_counts, want.layout.kv_counts)
    assert torch.equal(got.layout.kv_indices, want.layout.kv_indices)
    assert torch.equal(got.budget.value, want.budget.value)
    log.clear()
    attn.plan(q, k, timed=True)  # timed plans time each stage alone: no overlap
    assert log == ["estimate on main", "budget on main scores=True"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("budget", [{"gamma": 0.9, "min_budget": 0}, {"name": "fixed", "ratio": 0.3}])
def test_overlapped_plan_equals_sequential_on_gpu(budget):
    q, k = qk(B=2, Hq=8, Hkv=2, N=4096, D=128, device="cuda", seed=5)
    q, k = q.bfloat16(), k.bfloat16()
    attn = sparsekit.build("proxyattn", budget=budget, kernel="triton")
    attn.overlap_budget = True
    assert attn._overlap_ok(attn.problem(q, k))
    got = [attn.plan(q, k, timed=False) for _ in range(3)]
    attn.overlap_budget = False
    want = attn.plan(q, k, timed=False)
    torch.cuda.synchronize()
    for plan in got:
        assert torch.equal(plan.layout.kv_counts, want.layout.kv_counts)
        assert torch.equal(plan.layout.kv_indices, want.layout.kv_indices)
        assert torch.equal(plan.budget.value, want.budget.value)


def test_overlap_budget_is_a_build_option_kept_in_configs(tmp_path):
    from sparsekit import ConfigError
    from sparsekit.hf import _build

    on = sparsekit.build("proxyattn", overlap_budget=True)
    assert on.overlap_budget is True and on.config["overlap_budget"] is True and "overlap_budget" in repr(on)
    assert sparsekit.build(config=on.config).overlap_budget is True
    path = on.save(tmp_path / "on.toml")
    assert "overlap_budget = true" in path.read_text()
    assert sparsekit.build(config=path).overlap_budget is True
    assert sparsekit.build(config=path, overlap_budget=False).overlap_budget is False
    off = sparsekit.build("proxyattn")
    assert off.overlap_budget is False and "overlap_budget" not in repr(off)
    assert _build("proxyattn", {"overlap_budget": True}).overlap_budget is True  # sparsekit.hf.enable's options
    with pytest.raises(ConfigError, match=r"overlap_budget='yes' is not allowed \(allowed: True or False\)"):
        sparsekit.build("proxyattn", overlap_budget="yes")
