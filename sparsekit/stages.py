"""The four stage interfaces and what each declares about itself.

A stage is an attrs class whose fields are its options (with defaults and validators). Class
attributes declare what it consumes and produces, so :func:`sparsekit.build` can check a
composition before any tensor is seen. Plugins register the classes; the pipeline calls plain
instances (the hot path never goes through pluggy).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import attrs
import torch
from torch import Tensor

from .errors import ConfigError, invalid
from .layout import BlockLayout
from .problem import AttentionProblem
from .types import BlockScores, Budget, BudgetKind, ScoreKind

StageKind = Literal["estimator", "budget", "mask", "kernel"]
STAGE_KINDS: tuple[StageKind, ...] = ("estimator", "budget", "mask", "kernel")


class Stage:
    """Common behaviour: a registered ``name``, options from attrs fields, a label carrying them."""

    kind: ClassVar[StageKind]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    supports_varlen: ClassVar[bool] = False
    """False: the pipeline calls the stage once per sequence (trimmed to its length) and stacks the results."""

    @classmethod
    def option_fields(cls) -> tuple[attrs.Attribute, ...]:
        return attrs.fields(cls) if attrs.has(cls) else ()

    @classmethod
    def create(cls, **options: Any) -> Stage:
        """Instantiate with options; an unknown option names the valid ones."""
        valid = [f.name for f in cls.option_fields()]
        unknown = [k for k in options if k not in valid]
        if unknown:
            import difflib

            hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, valid, 1)) else repr(u)
                     for u in unknown]
            raise ConfigError(f"{cls.kind} {cls.name!r} has no option {', '.join(hints)} (valid options: "
                              f"{', '.join(valid) or 'none'}). Fix: use one of the valid option names")
        return cls(**options)

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.option_fields()}

    @property
    def label(self) -> str:
        """Name carrying the options, e.g. ``proxy(g=1,stride=4)``; fields with ``metadata={"tuning": True}``
        (memory knobs that do not change results) are left out."""
        tuning = {f.name for f in self.option_fields() if f.metadata.get("tuning")}
        opts = ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                        for k, v in self.options().items() if k not in tuning)
        return f"{self.name}({opts})" if opts else self.name

    def spec(self) -> dict[str, Any]:
        """Configuration dict ``{"name": ..., **options}`` (round-trips through :func:`sparsekit.build`)."""
        return {"name": self.name, **self.options()}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        out = {}
        for f in cls.option_fields():
            d = f.default
            out[f.name] = d.factory() if isinstance(d, attrs.Factory) else d  # type: ignore[attr-defined]
        return out

    def __repr__(self) -> str:
        return f"<{self.kind} {self.label}>"


class Estimator(Stage):
    """Scores every (q-block, kv-block) pair: ``estimate(problem) -> BlockScores``."""

    kind: ClassVar[StageKind] = "estimator"
    produces: ClassVar[ScoreKind] = "rank"

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        raise NotImplementedError


class Budgeter(Stage):
    """Decides how much each (batch, head, q-block) keeps: ``allocate(problem, scores) -> Budget``.

    ``reads_scores = False`` declares that ``allocate`` never looks at ``scores`` (it may get ``None``): the pipeline
    may then run it beside the estimator, the two on different CUDA streams (see ``SparseAttention.overlap_budget``).
    The default, ``True``, keeps the order estimate -> budget."""

    kind: ClassVar[StageKind] = "budget"
    produces: ClassVar[BudgetKind] = "count"
    needs_scores: ClassVar[bool] = False
    accepts_scores: ClassVar[frozenset[str]] = frozenset({"mass", "rank"})
    reads_scores: ClassVar[bool] = True

    def allocate(self, problem: AttentionProblem, scores: BlockScores | None) -> Budget:
        raise NotImplementedError


class MaskBuilder(Stage):
    """Turns scores and a budget into a layout: ``build(problem, scores, budget) -> BlockLayout``."""

    kind: ClassVar[StageKind] = "mask"
    needs_scores: ClassVar[bool] = True
    accepts_scores: ClassVar[frozenset[str]] = frozenset({"mass", "rank"})
    needs_budget: ClassVar[bool] = True
    accepts_budgets: ClassVar[frozenset[str]] = frozenset({"count"})

    def build(self, problem: AttentionProblem, scores: BlockScores | None, budget: Budget | None) -> BlockLayout:
        raise NotImplementedError


@attrs.frozen
class Capabilities:
    """What a kernel can run, as data (reported by ``sparsekit list``)."""

    dtypes: tuple[torch.dtype, ...]
    devices: tuple[str, ...]
    head_dims: tuple[int, ...] | None = None  # None: any
    block_sizes: tuple[int, ...] | None = None  # None: any
    gqa: bool = True
    varlen: bool = True
    causal: bool = True
    non_causal: bool = True
    interpreted_on_cpu: bool = False  # runs on CPU under TRITON_INTERPRET=1

    def describe(self) -> str:
        dt = ",".join(str(d).replace("torch.", "") for d in self.dtypes)
        hd = ",".join(map(str, self.head_dims)) if self.head_dims else "any"
        return f"dtypes={dt} devices={','.join(self.devices)} head_dims={hd} gqa={self.gqa} varlen={self.varlen}"


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def capability_reasons(caps: Capabilities, problem: AttentionProblem, v: Tensor | None, name: str) -> list[str]:
    """Reasons (sentences with the field, value, allowed values and fix) why ``caps`` cannot run ``problem``."""
    reasons: list[str] = []
    other = "use kernel='torch' (runs anywhere) or kernel='auto'"
    dtype = problem.q.dtype
    if dtype not in caps.dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in caps.dtypes)
        reasons.append(f"dtype={str(dtype).replace('torch.', '')} (supported by {name}: {allowed}): cast q/k/v or {other}")
    dev = problem.device.type
    ok_dev = dev in caps.devices or (dev == "cpu" and caps.interpreted_on_cpu and triton_interpreter_on())
    if not ok_dev:
        hint = " or set TRITON_INTERPRET=1 (slow, for tests)" if caps.interpreted_on_cpu else ""
        reasons.append(f"device={dev} (supported by {name}: {', '.join(caps.devices)}): move tensors to a GPU{hint}, "
                       f"or {other}")
    if caps.head_dims is not None:
        dv = v.shape[-1] if v is not None else problem.D
        for what, d in (("head_dim", problem.D), ("v head_dim", dv)):
            if d not in caps.head_dims:
                reasons.append(f"{what}={d} (supported by {name}: {', '.join(map(str, caps.head_dims))}): "
                               f"pad the head dim or {other}")
    if caps.block_sizes is not None:
        for what, bs in (("block_q", problem.block_q), ("block_k", problem.block_k)):
            if bs not in caps.block_sizes:
                reasons.append(f"{what}={bs} (supported by {name}: {', '.join(map(str, caps.block_sizes))}): "
                               f"build with {what}=128")
    if problem.group_size > 1 and not caps.gqa:
        reasons.append(f"GQA group size={problem.group_size} (supported by {name}: 1): {other}")
    if problem.is_varlen and not caps.varlen:
        reasons.append(f"q_lens/k_lens given (variable lengths unsupported by {name}): split the batch or {other}")
    if problem.causal and not caps.causal:
        reasons.append(f"causal=True (unsupported by {name}): {other}")
    if not problem.causal and not caps.non_causal:
        reasons.append(f"causal=False (unsupported by {name}): {other}")
    return reasons


class Kernel(Stage):
    """Executes a layout: ``forward(problem, v, layout) -> [B, Hq, Nq, Dv]``.

    ``priority`` orders kernels for ``kernel="auto"`` (highest that can run wins). ``dense = True`` declares
    that the kernel computes dense attention (every visible position) and accepts ``layout=None`` in
    ``not_supported_reasons`` and ``forward``: the pipeline's ``dense_above`` fallback runs such a kernel
    without building a layout.
    """

    kind: ClassVar[StageKind] = "kernel"
    capabilities: ClassVar[Capabilities]
    priority: ClassVar[int] = 0
    supports_varlen: ClassVar[bool] = True
    dense: ClassVar[bool] = False
    """True: computes dense attention and can run with ``layout=None`` (candidate of the ``dense_above`` fallback)."""

    def not_supported_reasons(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout | None) -> list[str]:
        return capability_reasons(self.capabilities, problem, v, repr(self.name))

    def emulated(self, problem: AttentionProblem) -> bool:
        """True when this kernel would run through an emulator (Triton's interpreter) on this device;
        ``kernel="auto"`` then prefers any natively running kernel."""
        return problem.device.type not in self.capabilities.devices

    def forward(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout) -> Tensor:
        raise NotImplementedError


STAGE_BASES: dict[StageKind, type[Stage]] = {
    "estimator": Estimator, "budget": Budgeter, "mask": MaskBuilder, "kernel": Kernel,
}


# option validators (attrs) ---------------------------------------------------------------------
def positive_int(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(attr.name, value, "an integer >= 1", f"pass {attr.name}={attr.default!r}", ConfigError)


def non_negative_int(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(attr.name, value, "an integer >= 0", f"pass {attr.name}={attr.default!r}", ConfigError)


def unit_fraction(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    """A float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise invalid(attr.name, value, "a number in (0, 1]", f"pass {attr.name}={attr.default!r}", ConfigError)
