"""Synthetic long-context Q/K/V with the attention patterns seen in real models.

The generator builds queries and keys from a few named components, so that softmax attention shows:

* an attention **sink** at token 0 (every query has a component on the sink key's direction);
* a **local window** (positional features whose dot product decays with distance, like RoPE's);
* **vertical** tokens attended from everywhere (a few keys share a direction every query carries);
* retrieval **needles**: far-back keys matched by the queries of the last ``needle_rows`` rows;
* optional **slash** lines: diagonals at fixed offsets (query ``i`` attends keys near ``i - offset``);
* heads of one GQA group share their KV head (hence their focus) but differ in ``sharpness``;
  with ``shared_needles=True`` all KV heads also share the vertical and needle positions.

Everything is seeded; dims ``[0, 2F)`` hold positional features, then one dim each for sink and
vertical directions, then content noise. See docs/workloads.md for every knob.

>>> from sparsekit.workloads import SyntheticWorkload
>>> q, k, v = SyntheticWorkload(n=8192, heads=32, kv_heads=8, head_dim=128).generate()
>>> q, k, v, info = SyntheticWorkload(n=2048, shared_needles=True, slash_offsets=(512,)).generate_with_info()
>>> info.needles[0, 0]                      # key positions of KV head 0's needles
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor


def _offsets(value: object) -> tuple[int, ...]:
    vals = (value,) if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
    for o in vals:
        if isinstance(o, bool) or not isinstance(o, int) or o < 1:
            raise ValueError(f"slash_offsets holds {o!r} (allowed: ints >= 1, the distance from a query back to the "
                             "keys it attends). Fix: e.g. slash_offsets=(512, 2048)")
    return vals


@attrs.frozen
class WorkloadInfo:
    """Where the generator put each pattern (ground truth for tests and plots).

    ``sink``: key 0. ``vertical``: int64 ``[B, kv_heads, vertical_tokens]`` key positions. ``needles``: int64
    ``[B, kv_heads, needles]`` key positions, matched by query rows ``[needle_row_start, n)``. ``slash_offsets``:
    the diagonals' offsets. With ``shared_needles=True`` vertical/needle positions are equal across KV heads.
    """

    sink: int
    vertical: Tensor
    needles: Tensor
    needle_row_start: int
    slash_offsets: tuple[int, ...]
    shared_needles: bool


@attrs.frozen
class SyntheticWorkload:
    """Knobs of the generator (logit sizes are in units of the scaled score ``q.k / sqrt(D)``).

    Shapes: ``n`` tokens, ``heads`` query heads, ``kv_heads`` KV heads (``heads % kv_heads == 0``), ``head_dim``,
    ``batch``. Patterns (each adds its logit to the matching (query, key) pairs; 0 turns it off):

    * ``window``, ``local_logit``: local band, ``local_logit * mean_f cos(w_f (i - j))`` with ``F`` frequencies up
      to ``2 pi / window`` (half-width about ``window / 2``; the kernel is periodic with period ``2 F window``).
    * ``sink_logit``: every query's extra logit on key 0.
    * ``vertical_tokens``, ``vertical_logit``: that many random keys (never key 0) that every query favours.
    * ``needles``, ``needle_logit``, ``needle_rows``: that many random keys in ``[0, n - 2 window)`` per KV head,
      each with its own content direction, matched by the last ``needle_rows`` query rows.
    * ``shared_needles``: all KV heads (of a batch entry) use the same vertical and needle positions and needle
      directions — the premise of proxy estimators that heads share their focus. Default False (each KV head draws
      its own: what earlier versions generated).
    * ``slash_offsets``, ``slash_logit``: diagonals; query ``i`` gets ``slash_logit`` on keys near ``i - o`` for
      every offset ``o`` (a copy of the local band shifted back by ``o``; needs ``local_logit > 0``). Default off.
    * ``noise``: scale of the random content part of q and k (logit noise of std about ``noise**2``).
    * ``sharpness``: each query head multiplies its KV group's query pattern by a factor drawn uniformly in this
      range (heads of a group share focus, differ in temperature), plus a small per-head noise.
    * ``seed``: everything is drawn from one ``torch.Generator`` seeded with it.
    """

    n: int = 8192
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    batch: int = 1
    window: int = 256
    local_logit: float = 10.0
    sink_logit: float = 9.0
    vertical_tokens: int = 16
    vertical_logit: float = 7.0
    needles: int = 4
    needle_logit: float = 12.0
    needle_rows: int = 256
    noise: float = 1.0
    sharpness: tuple[float, float] = (0.6, 1.4)
    seed: int = 0
    shared_needles: bool = False
    slash_offsets: tuple[int, ...] = attrs.field(default=(), converter=_offsets)
    slash_logit: float = 8.0

    def generate(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """``q [B, heads, n, D]``, ``k, v [B, kv_heads, n, D]``."""
        q, k, v, _ = self.generate_with_info(dtype, device)
        return q, k, v

    def generate_with_info(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                           ) -> tuple[Tensor, Tensor, Tensor, WorkloadInfo]:
        """:meth:`generate` plus a :class:`WorkloadInfo` telling where the patterns are."""
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads}, kv_heads={self.kv_heads} (allowed: heads a multiple of kv_heads). "
                             "Fix: e.g. heads=32, kv_heads=8")
        if self.slash_offsets and self.local_logit <= 0:
            raise ValueError(f"slash_offsets={self.slash_offsets} with local_logit={self.local_logit} (allowed: "
                             "local_logit > 0; slashes reuse the local band's features). Fix: set local_logit > 0")
        g = torch.Generator().manual_seed(self.seed)
        B, H, Hkv, N, D = self.batch, self.heads, self.kv_heads, self.n, self.head_dim
        F = min(32, (D - 2) // 4)
        sd = math.sqrt(D)
        pos = torch.arange(N, dtype=torch.float64)
        freqs = (torch.arange(F, dtype=torch.float64) + 0.5) / F * (2 * math.pi / self.window)

        def features(p: Tensor) -> Tensor:  # [N, 2F], features(i).features(j) = mean_f cos(w_f (i - j))
            ang = p[:, None] * freqs[None, :]
            return torch.cat([ang.cos(), ang.sin()], dim=-1).float() / math.sqrt(F)

        P = features(pos)
        s_dim, v_dim, c0 = 2 * F, 2 * F + 1, 2 * F + 2

        k = torch.randn(B, Hkv, N, D, generator=g) * self.noise / math.sqrt(D - c0) * math.sqrt(sd)
        q = torch.randn(B, Hkv, N, D, generator=g) * self.noise / math.sqrt(D - c0) * math.sqrt(sd)
        k[..., :c0] = 0
        q[..., :c0] = 0
        a = math.sqrt(sd)  # amplitude such that (a*x).(a*y)/sqrt(D) = x.y
        k[..., : 2 * F] += a * P * math.sqrt(self.local_logit)
        q[..., : 2 * F] += a * P * math.sqrt(self.local_logit)
        if self.slash_offsets:
            # query i also carries the features of i - o: its score with key j gains slash_logit * kernel(i - o - j)
            shifted = sum(features(pos - o) for o in self.slash_offsets)
            q[..., : 2 * F] += a * shifted * (self.slash_logit / math.sqrt(self.local_logit))
        k[:, :, 0, s_dim] += a * math.sqrt(self.sink_logit)
        q[..., s_dim] += a * math.sqrt(self.sink_logit)
        vert = torch.zeros(B, Hkv, self.vertical_tokens, dtype=torch.long)
        needle_pos = torch.zeros(B, Hkv, self.needles, dtype=torch.long)
        for b in range(B):
            shared: tuple[Tensor, list[tuple[int, Tensor]]] | None = None
            for h in range(Hkv):
                if shared is None or not self.shared_needles:
                    vt = torch.randperm(N - 1, generator=g)[: self.vertical_tokens] + 1
                    draws = []
                    for _ in range(self.needles):
                        t = int(torch.randint(0, max(1, N - 2 * self.window), (1,), generator=g))
                        c = torch.randn(D - c0, generator=g)
                        c = c / c.norm() * a * math.sqrt(self.needle_logit)
                        draws.append((t, c))
                    shared = (vt, draws)
                vt, draws = shared
                vert[b, h, : len(vt)] = vt
                k[b, h, vt, v_dim] += a * math.sqrt(self.vertical_logit)
                for i, (t, c) in enumerate(draws):
                    needle_pos[b, h, i] = t
                    k[b, h, t, c0:] += c
                    q[b, h, N - self.needle_rows :, c0:] += c
        q[..., v_dim] += a * math.sqrt(self.vertical_logit)
        # heads of one group: the KV head's query pattern, each with its own sharpness
        lo, hi = self.sharpness
        sharp = lo + (hi - lo) * torch.rand(B, Hkv, H // Hkv, 1, 1, generator=g)
        qh = (q[:, :, None] * sharp + 0.1 * torch.randn(B, Hkv, H // Hkv, N, D, generator=g))
        qh = qh.reshape(B, H, N, D)
        v = torch.randn(B, Hkv, N, D, generator=g)
        info = WorkloadInfo(sink=0, vertical=vert[..., : min(self.vertical_tokens, N - 1)], needles=needle_pos,
                            needle_row_start=max(0, N - self.needle_rows), slash_offsets=self.slash_offsets,
                            shared_needles=self.shared_needles)
        return (qh.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype),
                info)
