"""``flexprefill``: FlexPrefill's per-head pattern choice (arXiv 2502.20766) as per-head block mass scores.

Every query head gets a block mass distribution per q-block row from one of two models, chosen per head by
the Jensen-Shannon distance between the pooled estimate and the exact block attention of the last q-block:

* query-aware (estimate close to the truth): softmax of mean-pooled q-block and kv-block vectors;
* vertical-slash (estimate far from it): the last q-block's exact attention, split into a vertical profile
  (mass per key column) and a slash profile (mass per query-key offset), extrapolated to every row.

The per-row selection (``gamma``, ``min_budget``, ``max_budget``) is the shared ``cumulative`` budget and mask.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, ConfigError, Estimator
from sparsekit.stages import positive_int

PATTERNS = ("auto", "query_aware", "vertical_slash")


def _tau(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"tau={value!r} is not allowed (allowed: a number in [0, 1], a threshold on the "
                          "Jensen-Shannon distance, at most sqrt(ln 2) ~ 0.83). Fix: pass tau=0.1 (the default)")


def _pattern(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value not in PATTERNS:
        raise ConfigError(f"pattern={value!r} is not allowed (allowed: {', '.join(map(repr, PATTERNS))}). "
                          "Fix: pass pattern='auto' (choose per head by tau)")


def js_distance(p: Tensor, q: Tensor) -> Tensor:
    """Square root of the Jensen-Shannon divergence (natural log) over the last dim; ``0 log 0 = 0``."""
    m = (p + q) / 2

    def kl(a: Tensor) -> Tensor:
        return torch.where(a > 0, a * (torch.log(a.clamp_min(1e-38)) - torch.log(m.clamp_min(1e-38))), 0.0).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp_min(0.0).sqrt()


def last_block_profiles(problem: AttentionProblem, step_mb: int) -> tuple[Tensor, Tensor]:
    """Exact softmax attention of the last ``m = min(block_q, Nq)`` query rows of every head, averaged over the rows.

    Returns the vertical profile ``v`` float64 ``[B, Hq, Nk]`` (mass per key) and the slash profile ``f``
    float64 ``[B, Hq, Nk + m - 1]`` (mass per offset ``delta = query position - key position``, index
    ``delta + m - 1``, so ``delta`` runs from ``1 - m`` to ``Nk - 1``).
    """
    B, Hq, Hkv, Nq, Nk, D = problem.B, problem.Hq, problem.Hkv, problem.Nq, problem.Nk, problem.D
    g, dev = problem.group_size, problem.device
    m = min(problem.block_q, Nq)
    rows = torch.arange(Nq - m, Nq, device=dev)
    kpos = torch.arange(Nk, device=dev)
    ok = kpos[None, :] <= (Nk - Nq) + rows[:, None] if problem.causal else torch.ones(m, Nk, dtype=torch.bool, device=dev)
    v = torch.empty(B, Hkv, g, Nk, dtype=torch.float64, device=dev)
    f = torch.empty(B, Hkv, g, Nk + m - 1, dtype=torch.float64, device=dev)
    per_kv_head = B * g * m * (2 * Nk + m) * 4 * 3
    step = max(1, (step_mb << 20) // per_kv_head)
    for h0 in range(0, Hkv, step):  # chunks of KV heads bound memory
        h1 = min(h0 + step, Hkv)
        q = problem.q[:, h0 * g : h1 * g, Nq - m :].float().view(B, h1 - h0, g, m, D)
        k = problem.k[:, h0:h1, None].float()
        p = torch.softmax((torch.matmul(q, k.transpose(-1, -2)) * problem.softmax_scale).masked_fill(~ok, float("-inf")), -1)
        v[:, h0:h1] = p.mean(3).double()
        # slash: row r sits at position Nk - m + r; shift row r right by (m - 1 - r) so that column c holds
        # offset delta = Nk - 1 - c, then sum the rows
        shifted = F.pad(p.flip(3), (0, m)).flatten(3)[..., : m * (Nk + m - 1)].view(B, h1 - h0, g, m, Nk + m - 1)
        f[:, h0:h1] = shifted.sum(3).flip(-1).double() / m
    return v.view(B, Hq, Nk), f.view(B, Hq, Nk + m - 1)


def block_means(x: Tensor, block: int) -> Tensor:
    """float32 ``[B, H, ceil(N / block), D]``: mean of the rows of each block of ``x [B, H, N, D]`` (a partial last
    block averages its rows); accumulates in float32 without a float copy of ``x``."""
    B, H, N, D = x.shape
    full = N // block
    parts = [x[:, :, : full * block].reshape(B, H, full, block, D).sum(3, dtype=torch.float32) / block]
    if N % block:
        parts.append(x[:, :, full * block :].sum(2, keepdim=True, dtype=torch.float32) / (N % block))
    return torch.cat(parts, dim=2)


def _prefix2(x: Tensor) -> tuple[Tensor, Tensor]:
    """``P1[t] = sum_{u<t} x[u]`` (length n+1) and ``P2[t] = sum_{u<t} P1[u]`` (length n+2), float64."""
    p1 = F.pad(x.cumsum(-1), (1, 0))
    p2 = F.pad(p1.cumsum(-1), (1, 0))
    return p1, p2


def _at(p: Tensor, t: Tensor) -> Tensor:
    """``p[b, h, t]`` for every (b, h): ``p [B, H, n]``, ``t`` int64 ``[c, nKb]`` clamped into range -> ``[B, H, c, nKb]``."""
    idx = t.clamp(0, p.shape[-1] - 1).reshape(1, 1, -1).expand(p.shape[0], p.shape[1], -1)
    return p.gather(-1, idx).view(*p.shape[:2], *t.shape)


def _p2(p1: Tensor, p2: Tensor, t: Tensor) -> Tensor:
    """``P2`` at any integer ``t`` (``[c, nKb]``): 0 below 0, extended linearly past the end (``P1`` is constant there)."""
    n = p2.shape[-1] - 1
    extra = (t - n).clamp_min(0).to(p2.dtype) * p1[..., -1:, None]
    return torch.where(t < 0, 0.0, _at(p2, t) + extra)


def vertical_slash_scores(problem: AttentionProblem, v: Tensor, f: Tensor, i0: int, i1: int) -> Tensor:
    """float64 ``[B, Hq, i1 - i0, nKb]``: for q-blocks ``i0..i1-1``, the mass a row of the q-block puts on each
    kv-block, on average, if every row attended like the last block's average row, by key column (``v``) and by
    query-key offset (``f``); the two are averaged (each sums to 1 over a last-block row). Visible pairs only.

    Closed forms from prefix sums (float64): with ``V1``/``F1`` the prefix sums of ``v``/``f`` and ``V2``/``F2``
    theirs, a cell's vertical mass is ``sum_r V1(clip(pos_r + 1, c0, c1 + 1)) - V1(c0)`` and its slash mass
    ``sum_r sum_k f(pos_r - k) = F2(p1-c0+2) - F2(p0-c0+1) - F2(p1-c1+1) + F2(p0-c1)``."""
    Nq, Nk, bq, bk, dev = problem.Nq, problem.Nk, problem.block_q, problem.block_k, problem.device
    m = f.shape[-1] - Nk + 1
    ib = torch.arange(i0, i1, device=dev)
    r0 = ib * bq
    r1 = torch.clamp(r0 + bq, max=Nq) - 1
    jb = torch.arange(problem.nKb, device=dev)
    c0 = jb * bk
    c1 = torch.clamp(c0 + bk, max=Nk) - 1
    # [c, nKb] grids: positions of the first/last row (bottom-right aligned), first/last key
    p0, c0 = torch.broadcast_tensors((Nk - Nq + r0)[:, None], c0[None, :])
    p1, c1 = torch.broadcast_tensors((Nk - Nq + r1)[:, None], c1[None, :])
    n_rows = (p1 - p0 + 1).double()

    V1, V2 = _prefix2(v)
    lo, hi = c0, c1 + 1
    if problem.causal:  # x = pos_r + 1 runs over A..Bp; V1(clip(x, lo, hi)) summed in three pieces
        A, Bp = p0 + 1, p1 + 1
        n_lo = (torch.minimum(Bp + 1, lo) - A).clamp_min(0)
        n_hi = (Bp + 1 - torch.maximum(A, hi + 1)).clamp_min(0)
        lower = torch.maximum(A, lo).clamp_max(hi + 1)
        upper = torch.maximum(torch.minimum(Bp + 1, hi + 1), lower)
        vert = (n_lo - n_rows) * _at(V1, lo) + _p2(V1, V2, upper) - _p2(V1, V2, lower) + n_hi * _at(V1, hi)
    else:
        vert = n_rows * (_at(V1, hi) - _at(V1, lo))

    F1, F2 = _prefix2(f)
    d0 = 1 - m  # offset held by f[..., 0]
    slash = (_p2(F1, F2, p1 - c0 + 2 - d0) - _p2(F1, F2, p0 - c0 + 1 - d0)
             - _p2(F1, F2, p1 - c1 + 1 - d0) + _p2(F1, F2, p0 - c1 - d0))
    return (vert + slash) / (2 * n_rows)


@attrs.frozen
class FlexPrefillEstimator(Estimator):
    """Per-head block mass from FlexPrefill's two patterns, ``G = Hq``.

    For each query head, ``js`` = Jensen-Shannon distance (square root of the divergence) between the pooled
    estimate ``softmax(mean(q of the last m rows) . mean(k of each kv-block) * scale)`` and the exact attention
    of the last ``m = min(block_q, Nq)`` rows summed per kv-block (both over the last q-block's visible
    blocks). ``js < tau``: query-aware scores ``softmax(mean q of q-block . mean k of kv-block * scale)`` per
    row; otherwise vertical-slash scores (see :func:`vertical_slash_scores`), normalized per row.
    ``pattern`` forces one model for every head. ``info``: ``js`` float32 ``[B, Hq]``, ``vertical_slash`` bool
    ``[B, Hq]``, ``tau``. Output ``[B, Hq, nQb, nKb]`` float32 ``"mass"``, invisible blocks ``-inf``.
    """

    name: ClassVar[str] = "flexprefill"
    description: ClassVar[str] = "FlexPrefill: query-aware or vertical-slash block mass per head, chosen by JS distance"
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    tau: float = attrs.field(default=0.1, validator=_tau)
    pattern: str = attrs.field(default="auto", validator=_pattern)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        B, Hq, Hkv, Nq, Nk, D = problem.B, problem.Hq, problem.Hkv, problem.Nq, problem.Nk, problem.D
        g, bq, bk, nQb, nKb, dev = problem.group_size, problem.block_q, problem.block_k, problem.nQb, problem.nKb, problem.device
        scale = problem.softmax_scale
        vis = problem.visible_mask()  # [B, nQb, nKb]

        # mean-pooled q per q-block and k per kv-block (valid rows only)
        q_mean = block_means(problem.q, bq).view(B, Hkv, g, nQb, D)
        k_mean = block_means(problem.k, bk)[:, :, None]  # [B, Hkv, 1, nKb, D]

        # pattern choice from the last q-block
        m = min(bq, Nq)
        v, f = last_block_profiles(problem, self.step_mb)
        true = F.pad(v, (0, nKb * bk - Nk)).view(B, Hq, nKb, bk).sum(-1)  # [B, Hq, nKb]
        q_last = problem.q[:, :, Nq - m :].float().mean(2).view(B, Hkv, g, 1, D)
        est = (torch.matmul(q_last, k_mean.transpose(-1, -2)) * scale).view(B, Hq, nKb)
        vis_last = vis[:, -1][:, None, :]  # [B, 1, nKb]
        est = torch.softmax(est.masked_fill(~vis_last, float("-inf")), -1).double()
        js = js_distance(est, true)  # [B, Hq]
        if self.pattern == "auto":
            use_vs = js >= self.tau
        else:
            use_vs = torch.full_like(js, self.pattern == "vertical_slash", dtype=torch.bool)

        out = torch.empty(B, Hq, nQb, nKb, dtype=torch.float32, device=dev)
        vis_h = vis[:, None]  # [B, 1, nQb, nKb]
        if not bool(use_vs.all()):  # query-aware scores
            qa = torch.matmul(q_mean, k_mean.transpose(-1, -2)).view(B, Hq, nQb, nKb) * scale
            out.copy_(torch.softmax(qa.masked_fill(~vis_h, float("-inf")), -1))
        if bool(use_vs.any()):  # vertical-slash scores, q-blocks in chunks
            step = max(1, (self.step_mb << 20) // max(1, B * Hq * nKb * 8 * 16))
            for i0 in range(0, nQb, step):
                i1 = min(i0 + step, nQb)
                vs = vertical_slash_scores(problem, v, f, i0, i1).clamp_min(0.0).masked_fill(~vis_h[:, :, i0:i1], 0.0)
                vs = (vs / vs.sum(-1, keepdim=True).clamp_min(1e-300)).float()
                out[:, :, i0:i1] = torch.where(use_vs[:, :, None, None], vs, out[:, :, i0:i1])
        out = out.masked_fill(~vis_h, float("-inf"))
        return BlockScores(out, "mass", {"js": js.float(), "vertical_slash": use_vs, "tau": float(self.tau)})
