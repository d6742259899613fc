"""``proxy``: ProxyAttn's block scores from one proxy head per group (arXiv 2509.24745).

Two implementations of one definition: plain torch (``sparsekit.kernels.proxy_scores.naive``, the
reference, any device) and a Triton kernel (``sparsekit.kernels.proxy_scores.op``, GPU; CPU only under
``TRITON_INTERPRET=1``, for tests). ``impl="auto"`` picks Triton for CUDA tensors it supports.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import attrs

from sparsekit import AttentionProblem, BlockScores, ConfigError, Estimator, InputError, UnsupportedError
from sparsekit.errors import invalid
from sparsekit.kernels._checks import triton_installed
from sparsekit.kernels.proxy_scores.naive import proxy_scores_naive, sampled_rows
from sparsekit.stages import positive_int

__all__ = ["IMPLS", "ProxyEstimator", "choose_impl", "impl_choice", "sampled_rows"]

IMPLS = ("auto", "torch", "triton")


def impl_choice(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    """attrs validator of the ``impl`` option."""
    if value not in IMPLS:
        raise invalid(attr.name, value, ", ".join(repr(i) for i in IMPLS),
                      "pass impl='auto' (Triton on CUDA, torch elsewhere)", ConfigError)


def choose_impl(impl: str, problem: AttentionProblem, stage: str | Callable[[], str],
                reasons: Callable[[], list[str]]) -> str:
    """``"torch"`` or ``"triton"`` for this problem.

    ``auto``: Triton for CUDA tensors when triton is installed and the kernel supports the problem, torch
    otherwise (CPU always gets torch: the interpreter is for tests). ``triton``: Triton or an
    :class:`UnsupportedError` listing every reason. ``reasons`` imports the kernel's op lazily (triton reads
    ``TRITON_INTERPRET`` when the kernel module is first imported). ``stage`` (or a callable returning it, e.g.
    a stage's ``label``, only formatted for the error) names the caller in the error. On ``"triton"`` the
    inputs passed ``reasons()``: callers may launch the op with ``checked=True``.
    """
    if impl == "torch":
        return "torch"
    if impl == "auto":
        if problem.device.type != "cuda" or not triton_installed():
            return "torch"
        return "torch" if reasons() else "triton"
    why = (["triton is not installed (required by impl='triton'): pip install triton"]
           if not triton_installed() else reasons())
    if why:
        stage = stage if isinstance(stage, str) else stage()
        raise UnsupportedError(f"{stage}: impl='triton' cannot run {problem.describe()}:\n  - " + "\n  - ".join(why)
                               + f"\nFix: build with {stage.split('(')[0]}(impl='torch') or impl='auto'")
    return "triton"


@attrs.frozen
class ProxyEstimator(Estimator):
    """Block scores from proxy heads.

    The ``Hq`` query heads are split into ``g`` groups aligned with the KV groups (``g`` divides
    ``Hkv``). Proxy query = mean of the group's query heads; proxy key = mean of its KV heads. For
    every ``stride``-th query row of each q-block (counted back from its last row, which is always
    kept) the causal softmax over all keys is computed exactly (scale ``1/sqrt(D)``), then max-pooled
    over the sampled rows of the q-block and the keys of each kv-block. Output ``[B, g, nQb, nKb]``;
    blocks a q-block cannot see are ``-inf``.

    ``impl``: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"`` or ``"triton"``. The torch path's
    memory per step is bounded by ``step_mb``; the Triton path stores nothing token-level.
    """

    name: ClassVar[str] = "proxy"
    description: ClassVar[str] = "ProxyAttn: pooled proxy head per group, strided rows, max-pooled softmax"
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    g: int = attrs.field(default=1, validator=positive_int)
    stride: int = attrs.field(default=4, validator=positive_int)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})
    impl: str = attrs.field(default="auto", validator=impl_choice, metadata={"tuning": True})

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        Hkv, G = problem.Hkv, self.g
        if Hkv % G:
            divisors = [d for d in range(1, Hkv + 1) if Hkv % d == 0]
            raise InputError(f"g={G} does not divide the {Hkv} KV heads (allowed: {divisors}). "
                             f"Fix: build with estimator='proxy(g={max(d for d in divisors if d <= G)})'")
        kw = dict(groups=G, stride=self.stride, block_q=problem.block_q, block_k=problem.block_k,
                  causal=problem.causal, scale=problem.softmax_scale)
        if choose_impl(self.impl, problem, lambda: self.label, lambda: self._kernel_reasons(problem)) == "triton":
            from sparsekit.kernels.proxy_scores import op

            out = op.proxy_scores(problem.q, problem.k, checked=True, **kw)  # [B, G, nQb, nKb], invisible -inf
        else:
            out = proxy_scores_naive(problem.q, problem.k, step_mb=self.step_mb, **kw)
        if problem.is_varlen:  # the pipeline trims sequences for this stage; direct callers get padding -inf
            out = out.masked_fill(~problem.visible_mask()[:, None], float("-inf"))
        return BlockScores(out, "mass", {"g": G, "stride": self.stride})

    def _kernel_reasons(self, problem: AttentionProblem) -> list[str]:
        from sparsekit.kernels.proxy_scores import op

        return op.not_supported_reasons(problem.q, problem.k, groups=self.g, stride=self.stride,
                                        block_q=problem.block_q, block_k=problem.block_k)
