"""``vertical_slash``: MInference-style vertical + slash scores, mapped onto (q-block, kv-block) cells.

Token level (as in MInference): the last ``last_q`` query rows of every real head attend exactly (causal
softmax, scale ``1/sqrt(D)``) to all keys, reading the head's KV head (no repeated K). Summed over those
rows, the probabilities give

* ``vertical[c]``: the mass of key column ``c``;
* ``slash[d]``: the mass of the diagonal at offset ``d = pos(row) - c`` (bottom-right aligned positions,
  ``d = 0`` is the main diagonal).

Block level (our mapping): a query row at position ``p`` is estimated to give key ``c`` the weight
``vertical[c] + slash[p - c]`` (``c <= p`` when causal). The score of cell ``(i, j)`` is that weight summed
over the keys of kv-block ``j`` and averaged over the rows of q-block ``i``; each q-block's visible cells
are then normalised to sum to 1 (``"mass"`` scores). Every sum is a difference of prefix sums of
``vertical`` and ``slash`` (and of their prefix sums, for the average over rows), so the mapping costs
``O(nQb * nKb)`` per head, never ``O(Nq * Nk)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockScores, Estimator
from sparsekit.stages import positive_int


def _cumsum(x: Tensor, chunk: int = 1024) -> Tensor:
    """``x.cumsum(-1)`` as a two-level scan: a long last dim with few rows scans poorly on a GPU (one block per
    row), so scan chunks of ``chunk`` in parallel, then add the running totals of the chunks."""
    n = x.shape[-1]
    if n <= 4 * chunk:
        return x.cumsum(-1)
    pad = -n % chunk
    inner = torch.nn.functional.pad(x, (0, pad)).view(*x.shape[:-1], -1, chunk).cumsum(-1)
    totals = inner[..., -1]
    offsets = totals.cumsum(-1) - totals  # exclusive running total of each chunk
    return (inner + offsets[..., None]).view(*x.shape[:-1], -1)[..., :n]


def _prefix(x: Tensor) -> Tensor:
    """``out[..., n] = sum(x[..., :n])``: exclusive prefix sum, one longer than ``x`` (float64)."""
    return torch.nn.functional.pad(_cumsum(x.double()), (1, 0))


def vertical_slash_token_scores(q: Tensor, k: Tensor, last_q: int, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """Token-level vertical and slash mass of the last ``last_q`` rows of one sequence.

    ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]`` (full sequences, no padding). Returns float32
    ``vertical [B, Hq, Nk]`` (mass per key column) and ``slash [B, Hq, Nq + Nk - 1]`` indexed by
    ``u = d + Nq - 1`` for the diagonal offset ``d = pos(row) - c`` (row ``r`` at ``pos = Nk - Nq + r``).
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    L = min(last_q, Nq)
    rows = torch.arange(Nq - L, Nq, device=q.device)
    qs = q[:, :, Nq - L :].float().view(B, Hkv, g, L, D)
    s = torch.matmul(qs, k.float()[:, :, None].transpose(-1, -2)) * scale  # [B, Hkv, g, L, Nk]
    if causal:
        ok = torch.arange(Nk, device=q.device)[None, :] <= (Nk - Nq) + rows[:, None]  # [L, Nk]
        s = s.masked_fill(~ok, float("-inf"))
    p = torch.softmax(s, dim=-1)
    vertical = p.sum(-2).reshape(B, Hq, Nk)
    # slash: row t (index r = Nq - L + t) puts column c at u = r + (Nk - 1 - c); flipping the columns makes
    # that u = r + c'. Shift row t right by t with a strided view of the row-padded matrix, then sum rows.
    f = torch.nn.functional.pad(p.flip(-1), (0, L))  # [B, Hkv, g, L, Nk + L]
    W = Nk + L
    lead = f.shape[:-2]
    strides = tuple(f.stride()[:-2]) + (W - 1, 1)
    shifted = f.as_strided(tuple(lead) + (L, W - 1), strides)  # shifted[t, x] = f[t, x - t] (0 outside)
    part = shifted.sum(-2).reshape(B, Hq, W - 1)  # u = Nq - L + x
    slash = torch.nn.functional.pad(part, (Nq - L, 0))  # [B, Hq, Nq + Nk - 1]
    return vertical, slash


def map_to_blocks(vertical: Tensor, slash: Tensor, Nq: int, Nk: int, block_q: int, block_k: int,
                  causal: bool) -> Tensor:
    """float64 ``[..., nQb, nKb]``: cell ``(i, j)`` = mean over the rows ``p`` of q-block ``i`` of
    ``sum_{c in kv-block j, c <= p} vertical[c] + slash[p - c]`` (un-normalised; invisible cells hold
    whatever the formula gives and are masked by the caller)."""
    dev = vertical.device
    nQb, nKb = math.ceil(Nq / block_q), math.ceil(Nk / block_k)
    i = torch.arange(nQb, device=dev)
    j = torch.arange(nKb, device=dev)
    P0 = (Nk - Nq + i * block_q)[:, None]  # first row position of each q-block [nQb, 1]
    P1 = (Nk - Nq + torch.clamp((i + 1) * block_q, max=Nq) - 1)[:, None]
    m = (P1 - P0 + 1).double()
    s = (j * block_k)[None, :]  # first key of each kv-block [1, nKb]
    e = (torch.clamp((j + 1) * block_k, max=Nk) - 1)[None, :]

    # slash part: sum_{p=P0..P1} sum_{c=s..e} slash[p - c + U0] = sum_p PS(p - s + U0 + 1) - PS(p - e + U0)
    U0 = Nq - 1
    CPS = _prefix(_prefix(slash))  # CPS[y] = sum_{x<y} PS(x), PS(x) = sum_{u<x} slash[u]
    hi_idx = (P1 - s + U0 + 2).expand(nQb, nKb)
    lo_idx = (P0 - s + U0 + 1).expand(nQb, nKb)
    hi2_idx = (P1 - e + U0 + 1).expand(nQb, nKb)
    lo2_idx = (P0 - e + U0).expand(nQb, nKb)
    sl = (CPS[..., hi_idx] - CPS[..., lo_idx]) - (CPS[..., hi2_idx] - CPS[..., lo2_idx])

    # vertical part: sum_{p=P0..P1} sum_{c=s..min(e,p)} vertical[c] = sum_{x=P0+1..P1+1} CV(clamp(x, s, e+1)) - CV(s)
    CV = _prefix(vertical)  # [..., Nk + 1]
    block_mass = CV[..., (e + 1).expand(nQb, nKb)] - CV[..., s.expand(nQb, nKb)]
    if causal:
        CCV = _prefix(CV)  # [..., Nk + 2]
        X0, X1 = P0 + 1, P1 + 1
        n_lo = (torch.minimum(X1, s - 1) - X0 + 1).clamp_min(0).double()  # rows before the block: CV(s)
        lo = torch.maximum(X0, s)
        hi = torch.minimum(X1, e + 1)
        mid_ok = hi >= lo
        hi_i = torch.where(mid_ok, hi + 1, 0).expand(nQb, nKb)
        lo_i = torch.where(mid_ok, lo, 0).expand(nQb, nKb)
        n_hi = (X1 - torch.maximum(X0, e + 2) + 1).clamp_min(0).double()  # rows past the block: CV(e+1)
        cv_s, cv_e = CV[..., s.expand(nQb, nKb)], CV[..., (e + 1).expand(nQb, nKb)]
        ve = n_lo * cv_s + (CCV[..., hi_i] - CCV[..., lo_i]) + n_hi * cv_e - m * cv_s
    else:
        ve = m * block_mass
    return (sl + ve) / m


@attrs.frozen
class VerticalSlashEstimator(Estimator):
    """MInference-style vertical + slash scores per real head, mapped onto blocks.

    The last ``last_q`` query rows attend exactly to all keys; column sums give the vertical mass, sums
    along each diagonal (bottom-right aligned) the slash mass. Cell ``(i, j)`` scores the average, over
    the rows of q-block ``i``, of the vertical mass of kv-block ``j``'s columns plus the slash mass of the
    diagonals through those (row, column) pairs, normalised so each q-block's visible cells sum to 1.
    Output ``[B, Hq, nQb, nKb]`` float32 (one group per query head), ``-inf`` where a q-block cannot see.
    """

    name: ClassVar[str] = "vertical_slash"
    description: ClassVar[str] = "MInference vertical+slash: last rows' column and diagonal mass, mapped onto blocks"
    produces: ClassVar[str] = "mass"  # type: ignore[assignment]

    last_q: int = attrs.field(default=64, validator=positive_int)
    step_mb: int = attrs.field(default=256, validator=positive_int, metadata={"tuning": True})

    def estimate(self, problem: AttentionProblem) -> BlockScores:
        B, Hq, Hkv, Nq, Nk = problem.B, problem.Hq, problem.Hkv, problem.Nq, problem.Nk
        g, L = problem.group_size, min(self.last_q, problem.Nq)
        out = torch.empty(B, Hq, problem.nQb, problem.nKb, dtype=torch.float32, device=problem.device)
        # bytes per KV head: probabilities and their flipped/padded copy (fp32), plus fp64 cell temporaries
        per_kv_head = B * g * (L * (Nk + L) * 4 * 4 + problem.nQb * problem.nKb * 8 * 6)
        step = max(1, (self.step_mb << 20) // max(per_kv_head, 1))
        for h0 in range(0, Hkv, step):  # chunks of KV heads bound memory
            h1 = min(h0 + step, Hkv)
            vert, slash = vertical_slash_token_scores(problem.q[:, h0 * g : h1 * g], problem.k[:, h0:h1], self.last_q,
                                                      problem.causal, problem.softmax_scale)
            out[:, h0 * g : h1 * g] = map_to_blocks(vert, slash, Nq, Nk, problem.block_q, problem.block_k,
                                                    problem.causal).float()
        vis = problem.visible_mask()[:, None]  # [B, 1, nQb, nKb]
        out = out.clamp_min(0.0).masked_fill(~vis, 0.0)  # prefix-sum differences may round below 0
        out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return BlockScores(out.masked_fill(~vis, float("-inf")), "mass", {"last_q": L})
