"""Quality and speed metrics of a layout or an output against dense attention.

* :func:`density` — kept / causal (visible) blocks; :func:`density_per_head` per ``(batch, head)``.
* :func:`attention_recall` — the true softmax mass that falls inside the kept blocks, exact on the
  evaluated query rows (a sample of rows at large ``N``, memory bounded); :func:`attention_recall_per_head`.
* :func:`relative_error` — ``||o - o_ref|| / ||o_ref||``; :func:`relative_error_per_head`.
* :func:`head_stats` — the per-head statistics of one plan (density, recall, budget ratio, error).
* :func:`time_ms` — median wall time of a call in milliseconds, synchronising CUDA.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
from torch import Tensor

from .layout import BlockLayout

if TYPE_CHECKING:
    from .pipeline import Plan

T = TypeVar("T")


def density(layout: BlockLayout) -> float:
    """Kept blocks / causal (visible) blocks over the whole batch and all heads."""
    return layout.density()


def density_per_head(layout: BlockLayout) -> Tensor:
    """float32 ``[B, H]``: kept / visible blocks of each head."""
    return layout.density_per_head()


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    ref64 = ref.double()
    return float((out.double() - ref64).norm() / ref64.norm().clamp_min(1e-300))


def relative_error_per_head(out: Tensor, ref: Tensor) -> Tensor:
    """float64 ``[B, H]``: ``||out[b, h] - ref[b, h]|| / ||ref[b, h]||`` (outputs ``[B, H, N, D]``)."""
    ref64 = ref.double()
    num = (out.double() - ref64).flatten(2).norm(dim=-1)
    return num / ref64.flatten(2).norm(dim=-1).clamp_min(1e-300)


def _recall_sums(q: Tensor, k: Tensor, layout: BlockLayout, rows: int | None, scale: float | None, seed: int,
                 step_mb: int) -> tuple[Tensor, list[int]]:
    """Per ``(batch, query head)``: the kept softmax mass summed over the evaluated rows (float64 ``[B, Hq]``,
    on the CPU), and the number of rows evaluated per sequence."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    keep = layout.to_dense()  # [B, Hq, nQb, nKb]
    ql = layout.q_lens.tolist() if layout.q_lens is not None else [Nq] * B
    kl = layout.k_lens.tolist() if layout.k_lens is not None else [Nk] * B
    gen = torch.Generator().manual_seed(seed)
    sums = torch.zeros(B, Hq, dtype=torch.float64)
    n_rows: list[int] = []
    for b in range(B):
        n = ql[b]
        if rows is None or rows >= n:
            sel = torch.arange(n)
        else:
            sel = torch.cat([torch.randperm(n - 1, generator=gen)[: rows - 1], torch.tensor([n - 1])])
        sel = sel.to(dev)
        r, nk = len(sel), kl[b]
        n_rows.append(r)
        kpos = torch.arange(nk, device=dev)
        ok = torch.ones(r, nk, dtype=torch.bool, device=dev)
        if layout.causal:
            ok = kpos[None, :] <= (nk - n) + sel[:, None]  # [r, Nk_b]
        # KV heads per step so that the float32 scores of one step stay within step_mb
        step = max(1, min(Hkv, (step_mb << 20) // max(g * r * nk * 4 * 3, 1)))
        for h0 in range(0, Hkv, step):
            h1 = min(h0 + step, Hkv)
            qs = q[b, h0 * g : h1 * g, sel].float().view(h1 - h0, g, r, D)
            kb = k[b, h0:h1, :nk].float()
            s = torch.matmul(qs, kb[:, None].transpose(-1, -2)) * scale  # [h, g, r, Nk_b]
            p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1).reshape((h1 - h0) * g, r, nk)
            kept = keep[b, h0 * g : h1 * g][:, sel // layout.block_q][..., kpos // layout.block_k]  # [h*g, r, Nk_b]
            sums[b, h0 * g : h1 * g] = (p * kept).sum((-1, -2)).double().cpu()
    return sums, n_rows


def attention_recall(q: Tensor, k: Tensor, layout: BlockLayout, *, rows: int | None = 256, scale: float | None = None,
                     seed: int = 0, step_mb: int = 256) -> float:
    """True softmax mass that falls inside the kept blocks, averaged over heads and query rows.

    Exact for every row evaluated; ``rows`` samples that many query rows per sequence (always
    including the last one) so memory stays ``O(Hq * rows * Nk)`` (KV heads are processed in steps of at
    most ``step_mb`` MiB of scores); ``rows=None`` evaluates all.
    """
    sums, n_rows = _recall_sums(q, k, layout, rows, scale, seed, step_mb)
    return float(sums.sum()) / max(q.shape[1] * sum(n_rows), 1)


def attention_recall_per_head(q: Tensor, k: Tensor, layout: BlockLayout, *, rows: int | None = 256,
                              scale: float | None = None, seed: int = 0, step_mb: int = 256) -> Tensor:
    """float64 ``[B, Hq]`` (CPU): :func:`attention_recall` of each head — the kept softmax mass averaged over
    the evaluated rows of that head (the same rows as :func:`attention_recall` with the same ``seed``)."""
    sums, n_rows = _recall_sums(q, k, layout, rows, scale, seed, step_mb)
    return sums / torch.tensor(n_rows, dtype=torch.float64).clamp_min(1)[:, None]


def head_stats(plan: Plan, q: Tensor, k: Tensor, out: Tensor | None = None, ref: Tensor | None = None, *,
               rows: int | None = 256, seed: int = 0) -> dict[str, Any]:
    """Per-head statistics of one plan, as plain lists over query heads (averaged over the batch):

    ``density`` (kept / causal blocks), ``recall`` (:func:`attention_recall_per_head`), ``budget_ratio``
    (the budgeter's per-head ratio ``Budget.info["ratio"]``, e.g. ProxyAttn's ``r_h``; ``None`` when the
    budgeter reports none) and ``rel_error`` (when ``out`` and ``ref`` are given, else ``None``).
    """
    stats: dict[str, Any] = {
        "density": plan.layout.density_per_head().double().mean(0).tolist(),
        "recall": attention_recall_per_head(q, k, plan.layout, rows=rows, seed=seed,
                                            scale=plan.problem.scale).mean(0).tolist(),
        "budget_ratio": None, "rel_error": None,
    }
    if plan.budget is not None and "ratio" in plan.budget.info:
        stats["budget_ratio"] = plan.budget.info["ratio"].double().reshape(plan.layout.B, -1).mean(0).tolist()
    if out is not None and ref is not None:
        stats["rel_error"] = relative_error_per_head(out, ref).mean(0).tolist()
    return stats


def time_ms(fn: Callable[[], T], device: torch.device | str = "cpu", *, repeats: int = 1,
            warmup: int = 0) -> tuple[float, T]:
    """Median wall time (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, synchronising
    CUDA around each call; returns the last result too."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *a: None)
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(max(1, repeats)):
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    return median, out  # type: ignore[return-value]
