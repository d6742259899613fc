"""The composed attention callable: estimator -> budgeter -> mask builder -> kernel."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import attrs
import torch
from torch import Tensor

from .config import dump_config
from .errors import ConfigError, UnsupportedError, invalid
from .layout import BlockLayout
from .problem import AttentionProblem, check_finite
from .stages import Budgeter, Estimator, Kernel, MaskBuilder
from .types import BlockScores, Budget


@attrs.frozen(eq=False)
class Plan:
    """The planning result for one call: scores, budget, layout and stage timings (ms)."""

    problem: AttentionProblem
    layout: BlockLayout
    scores: BlockScores | None = None
    budget: Budget | None = None
    timings: dict[str, float] = attrs.field(factory=dict)
    name: str = ""
    info: dict[str, Any] = attrs.field(factory=dict)  # filled by execution: "kernel" / "kernel_name", the kernel that ran

    @property
    def density(self) -> float:
        return self.layout.density()

    def summary(self) -> dict[str, Any]:
        """Plain-Python summary: density, per-head density/budget ratio, timings."""
        out: dict[str, Any] = {"name": self.name, "density": self.density, "timings_ms": dict(self.timings),
                               "density_per_head": self.layout.density_per_head().tolist(), **self.info}
        if self.budget is not None and "ratio" in self.budget.info:
            out["budget_ratio_per_head"] = self.budget.info["ratio"].tolist()
        return out


_PRIORITY_STREAMS: dict[int, torch.cuda.Stream] = {}


def _priority_stream(device: torch.device) -> torch.cuda.Stream:
    """The highest-priority stream of ``device`` on which an overlapped estimate runs (one per device, made on
    first use; torch maps the priority to the device's range)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _PRIORITY_STREAMS.get(index)
    if stream is None:
        stream = _PRIORITY_STREAMS[index] = torch.cuda.Stream(device=index, priority=-100)
    return stream


def _timer(timings: dict[str, float] | None, key: str, device: torch.device) -> ContextManager[None]:
    """Adds the block's milliseconds to ``timings[key]`` (synchronising CUDA); nothing when ``timings`` is None."""
    return nullcontext() if timings is None else _timed(timings, key, device)


@contextmanager
def _timed(timings: dict[str, float], key: str, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1e3


def check_dense_above(value: Any) -> float | None:
    """``dense_above`` as a float in (0, 1], or ``None`` (off); anything else raises :class:`ConfigError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise invalid("dense_above", value, "None (off) or a number in (0, 1], the plan density from which dense "
                      "attention runs instead of the layout", "pass dense_above=0.85, or None to turn it off",
                      ConfigError)
    return float(value)


def _slice_scores(scores: BlockScores | None, b: int | None, p: AttentionProblem) -> BlockScores | None:
    if scores is None or b is None:
        return scores
    return attrs.evolve(scores, scores=scores.scores[b : b + 1, :, : p.nQb, : p.nKb])


def _slice_budget(budget: Budget | None, b: int | None, p: AttentionProblem) -> Budget | None:
    if budget is None or b is None:
        return budget
    return attrs.evolve(budget, value=budget.value[b : b + 1, :, : p.nQb])


class SparseAttention:
    """Block-sparse attention composed of four stages.

    ``attn(q, k, v)`` plans and attends; ``attn.plan(q, k)`` returns the :class:`Plan` alone;
    ``attn.run(plan, v)`` executes a plan. ``q [B, Hq, Nq, D]``, ``k/v [B, Hkv, Nk, D]``.

    ``dense_above``: when a plan's density (kept / causal blocks) is at least this fraction, :meth:`run` computes
    dense attention with a kernel declaring ``dense = True`` (``sdpa``) instead of the layout; ``None`` (default):
    always the layout.

    ``overlap_budget`` (default ``False``: estimate, then budget, on one stream): on CUDA, an untimed plan runs the
    estimator on a high-priority stream while a budgeter declaring ``reads_scores = False`` (``dynamic``,
    ``fixed``) runs on the current one, and the mask waits for both (``_overlap_ok`` lists the conditions). Off by
    default: on an H200 it sped up the Qwen-shape plan at 32K and slowed the Llama-shape one (docs/architecture.md).
    """

    def __init__(self, estimator: Estimator | None, budgeter: Budgeter | None, mask: MaskBuilder,
                 kernel: Kernel | None, *, kernels: list[Kernel] | None = None, block_q: int = 128,
                 block_k: int = 128, check_finite: bool = False, validate: bool = False,
                 dense_above: float | None = None, overlap_budget: bool = False) -> None:
        self.estimator, self.budgeter, self.mask, self.kernel = estimator, budgeter, mask, kernel
        self.overlap_budget = bool(overlap_budget)
        self.kernels = kernels or []  # candidates for kernel="auto", highest priority first
        self.block_q, self.block_k = block_q, block_k
        self.check_finite, self.validate = check_finite, validate
        self.dense_above = check_dense_above(dense_above)
        self._name_cache: tuple[tuple[Any, ...], str] = ((), "")
        self._warned: set[str] = set()  # dense_above fallbacks that could not run, warned once each

    # identity --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        # every plan carries the name: formatted once per set of stages (stages are frozen; ``is`` spots a swap)
        stages = (self.estimator, self.budgeter, self.mask, self.kernel)
        cached, name = self._name_cache
        if len(cached) != 4 or any(a is not b for a, b in zip(cached, stages)):
            parts = [s.label for s in stages[:3] if s is not None]
            name = "+".join(parts + [self.kernel.label if self.kernel is not None else "auto"])
            self._name_cache = (stages, name)
        return name

    def __repr__(self) -> str:
        dense = f" dense_above={self.dense_above}" if self.dense_above is not None else ""
        overlap = " overlap_budget" if self.overlap_budget else ""
        return f"<SparseAttention {self.name} blocks={self.block_q}x{self.block_k}{dense}{overlap}>"

    @property
    def config(self) -> dict[str, Any]:
        """Configuration dict; ``sparsekit.build(config=attn.config)`` rebuilds the same pipeline."""
        spec = (lambda s: None if s is None else s.spec())
        return {"estimator": spec(self.estimator), "budget": spec(self.budgeter), "mask": spec(self.mask),
                "kernel": spec(self.kernel) if self.kernel is not None else {"name": "auto"},
                "block_q": self.block_q, "block_k": self.block_k, "check_finite": self.check_finite,
                "validate": self.validate, "dense_above": self.dense_above, "overlap_budget": self.overlap_budget}

    def save(self, path: str | Path) -> Path:
        """Write the configuration as TOML (an ablation is a file)."""
        path = Path(path)
        path.write_text(dump_config(self.config))
        return path

    # planning --------------------------------------------------------------------------------
    def problem(self, q: Tensor, k: Tensor, v: Tensor | None = None, *, causal: bool = True,
                q_lens: Tensor | None = None, k_lens: Tensor | None = None,
                scale: float | None = None) -> AttentionProblem:
        problem = AttentionProblem.create(q, k, v, block_q=self.block_q, block_k=self.block_k, causal=causal,
                                          q_lens=q_lens, k_lens=k_lens, scale=scale)
        if self.check_finite:
            check_finite(q=q, k=k, v=v)  # type: ignore[arg-type]
        return problem

    def plan(self, q: Tensor, k: Tensor, *, causal: bool = True, q_lens: Tensor | None = None,
             k_lens: Tensor | None = None, scale: float | None = None, timed: bool = True) -> Plan:
        """Run the three planning stages; ``timed`` records per-stage milliseconds (synchronising)."""
        return self._plan(self.problem(q, k, causal=causal, q_lens=q_lens, k_lens=k_lens, scale=scale), timed)

    def _plan(self, problem: AttentionProblem, timed: bool) -> Plan:
        timings: dict[str, float] | None = {} if timed else None
        dev = problem.device
        scores = budget = None
        if not timed and self._overlap_ok(problem):
            scores, budget = self._estimate_beside_budget(problem)
        if self.estimator is not None and scores is None:
            with _timer(timings, "estimate", dev):
                scores = self._per_seq(self.estimator, problem, lambda p, b: self.estimator.estimate(p),  # type: ignore[union-attr]
                                       lambda parts: BlockScores.stack(parts, problem.nQb, problem.nKb))
        if self.budgeter is not None and budget is None:
            with _timer(timings, "budget", dev):
                budget = self._per_seq(self.budgeter, problem,
                                       lambda p, b: self.budgeter.allocate(p, _slice_scores(scores, b, p)),  # type: ignore[union-attr]
                                       lambda parts: Budget.stack(parts, problem.nQb))
        with _timer(timings, "mask", dev):
            full = problem
            layout = self._per_seq(self.mask, problem,
                                   lambda p, b: self.mask.build(p, _slice_scores(scores, b, p), _slice_budget(budget, b, p)),
                                   lambda parts: BlockLayout.stack(parts, BlockLayout.for_problem(full, parts[0].kv_counts, parts[0].kv_indices)))
        if self.validate:
            layout.validate()
        return Plan(problem, layout, scores, budget, timings or {}, self.name)

    def _overlap_ok(self, problem: AttentionProblem) -> bool:
        """Whether the budget may run beside the estimate: ``overlap_budget`` on, both stages present, the budgeter
        declares ``reads_scores = False``, CUDA tensors, both stages take the whole batch (per-sequence calls
        would build and cache block bounds on both streams) and no CUDA graph is being captured."""
        est, bud = self.estimator, self.budgeter
        return (self.overlap_budget and est is not None and bud is not None and not bud.reads_scores
                and not bud.needs_scores and problem.device.type == "cuda"
                and (not problem.is_varlen or (bud.supports_varlen and est.supports_varlen))
                and not torch.cuda.is_current_stream_capturing())

    def _estimate_beside_budget(self, problem: AttentionProblem) -> tuple[BlockScores, Budget]:
        """The estimate on a high-priority stream and the budget on the current one, side by side; the current
        stream then waits for the estimate. Both read ``q``/``k`` and the block bounds, computed here first, on
        the current stream.

        The estimate is the long pole, so it is issued first and on the stream of higher priority: the block
        scheduler starts its pending programs before the budget's, and the budget's programs fill the SMs the
        estimate's last programs leave idle. Measured on an H200 (medians of interleaved runs): Qwen shape (G=4,
        one estimate launch) at 32K 0.74 -> 0.67 ms per plan; Llama shape (split-K estimate, three launches) at
        32K 0.80 -> 0.89 ms, since budget programs already running delay the estimate's later launches; 128K
        within noise (``plan_overlap_priority_32k_h200_2026-12-03.json``,
        ``plan_overlap_priority_h200_2026-12-03.json``). Issued ahead of the estimate, or on an equal-priority
        stream, it was worse (``plan_overlap_budget_first_h200_2026-12-03.json``,
        ``plan_overlap_equal_priority_h200_2026-12-03.json``). Hence ``overlap_budget`` is off by default."""
        main = torch.cuda.current_stream(problem.device)
        fast = _priority_stream(problem.device)
        problem.block_bounds()  # cached on the problem: neither branch builds them
        fast.wait_event(main.record_event())  # q, k and the bounds are ready
        with torch.cuda.stream(fast):
            scores = self.estimator.estimate(problem)  # type: ignore[union-attr]
        budget = self.budgeter.allocate(problem, None)  # type: ignore[union-attr]
        main.wait_stream(fast)
        for t in (scores.scores, *scores.info.values()):
            if isinstance(t, Tensor) and t.is_cuda:
                t.record_stream(main)  # made on the estimate's stream, used on this one
        return scores, budget

    @staticmethod
    def _per_seq(stage: Any, problem: AttentionProblem, call: Callable[[AttentionProblem, int | None], Any],
                 stack: Callable[[list[Any]], Any]) -> Any:
        """Call a stage on the batch, or once per trimmed sequence when it does not handle lengths itself."""
        if not problem.is_varlen or stage.supports_varlen:
            return call(problem, None)
        return stack([call(problem.sequence(b), b) for b in range(problem.B)])

    # execution -------------------------------------------------------------------------------
    def select_kernel(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout | None) -> Kernel:
        """The chosen kernel if it can run, else (``auto``) the highest-priority one that can."""
        if self.kernel is not None:
            reasons = self.kernel.not_supported_reasons(problem, v, layout)
            if not reasons:
                return self.kernel
            others = [k.name for k in self.kernels if k is not self.kernel and not k.not_supported_reasons(problem, v, layout)]
            alt = f"\nKernels that can run it: {', '.join(others)} (or kernel='auto')." if others else ""
            raise UnsupportedError(f"kernel {self.kernel.name!r} cannot run {problem.describe()}:\n  - "
                                   + "\n  - ".join(reasons) + alt)
        report = []
        # kernels that would only run emulated (Triton's CPU interpreter) come last
        for cand in sorted(self.kernels, key=lambda k: k.emulated(problem)):
            reasons = cand.not_supported_reasons(problem, v, layout)
            if not reasons:
                return cand
            report.append(f"{cand.name}: " + "; ".join(reasons))
        raise UnsupportedError(f"no kernel can run {problem.describe()}:\n  - " + "\n  - ".join(report))

    def dense_kernel(self, problem: AttentionProblem, v: Tensor) -> Kernel:
        """The kernel of the ``dense_above`` fallback: the highest-priority kernel declaring ``dense = True``
        whose ``not_supported_reasons(problem, v, None)`` is empty (natively running kernels first, as for
        ``auto``); raises :class:`UnsupportedError` listing every dense candidate's reasons when none can."""
        kernel, report = self._dense_kernel(problem, v)
        if kernel is None:
            raise UnsupportedError(f"no dense kernel can run {problem.describe()}:\n  - " + "\n  - ".join(report))
        return kernel

    def _dense_kernel(self, problem: AttentionProblem, v: Tensor) -> tuple[Kernel | None, list[str]]:
        report = []
        for cand in sorted((k for k in self.kernels if k.dense), key=lambda k: k.emulated(problem)):
            reasons = cand.not_supported_reasons(problem, v, None)
            if not reasons:
                return cand, []
            report.append(f"{cand.name}: " + "; ".join(reasons))
        return None, report or ["no registered kernel declares dense = True (the built-in one is 'sdpa')"]

    def run(self, plan: Plan, v: Tensor, timed: bool = False) -> Tensor:
        """Execute a plan's layout on ``v``; with ``dense_above`` set and reached by ``plan.density``, dense
        attention instead (``plan.info["dense_fallback"] = True``), or the layout when no dense kernel can run
        (``dense_fallback = False`` and ``dense_fallback_reason``, with a warning once per reason)."""
        problem = plan.problem
        plan.info.pop("dense_fallback", None)
        plan.info.pop("dense_fallback_reason", None)
        kernel: Kernel | None = None
        layout: BlockLayout | None = plan.layout
        # plan.density is read on the host (a device sync), only when dense_above is set
        if self.dense_above is not None and (density := plan.density) >= self.dense_above:
            kernel, report = self._dense_kernel(problem, v)
            if kernel is not None:
                layout = None  # dense attention: no layout is built or read
                plan.info["dense_fallback"] = True
            else:  # an optimisation only: run the layout as planned
                why = "; ".join(report)
                plan.info["dense_fallback"], plan.info["dense_fallback_reason"] = False, why
                if why not in self._warned:
                    self._warned.add(why)
                    warnings.warn(f"sparsekit: dense_above={self.dense_above} reached (density {density:.3f}) but no "
                                  f"dense kernel can run {problem.describe()} ({why}); running the sparse layout "
                                  "instead (warned once per reason)", RuntimeWarning, stacklevel=2)
        if kernel is None:
            kernel = self.select_kernel(problem, v, plan.layout)
        plan.info["kernel"], plan.info["kernel_name"] = kernel.label, kernel.name
        with _timer(plan.timings if timed else None, "attend", problem.device):
            out = kernel.forward(problem, v, layout)  # type: ignore[arg-type]
        return out

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, q_lens: Tensor | None = None,
                 k_lens: Tensor | None = None, scale: float | None = None, return_plan: bool = False,
                 timed: bool = False) -> Tensor | tuple[Tensor, Plan]:
        problem = self.problem(q, k, v, causal=causal, q_lens=q_lens, k_lens=k_lens, scale=scale)
        plan = self._plan(problem, timed)
        out = self.run(plan, v, timed)
        return (out, plan) if return_plan else out
