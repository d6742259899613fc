"""Synthetic long-context Q/K/V with the attention patterns seen in real models.

The generator builds queries and keys from a few named components, so that softmax attention shows:

* an attention **sink** at token 0 (every query has a component on the sink key's direction);
* a **local window** (positional features whose dot product decays with distance, like RoPE's);
* **vertical** tokens attended from everywhere (a few keys share a direction every query carries);
* retrieval **needles**: far-back keys matched by the queries of the last ``needle_rows`` rows;
* heads of one GQA group share their KV head (hence their focus) but differ in ``sharpness``.

Everything is seeded; dims ``[0, 2F)`` hold positional features, then one dim each for sink and
vertical directions, then content noise.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor


@attrs.frozen
class SyntheticWorkload:
    """Knobs of the generator (logit sizes are in units of the scaled score ``q.k / sqrt(D)``)."""

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

    def generate(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """``q [B, heads, n, D]``, ``k, v [B, kv_heads, n, D]``."""
        g = torch.Generator().manual_seed(self.seed)
        B, H, Hkv, N, D = self.batch, self.heads, self.kv_heads, self.n, self.head_dim
        F = min(32, (D - 2) // 4)
        sd = math.sqrt(D)
        pos = torch.arange(N, dtype=torch.float64)
        freqs = (torch.arange(F, dtype=torch.float64) + 0.5) / F * (2 * math.pi / self.window)
        ang = pos[:, None] * freqs[None, :]
        P = torch.cat([ang.cos(), ang.sin()], dim=-1).float() / math.sqrt(F)  # P(i).P(j) = mean cos(w (i-j))
        s_dim, v_dim, c0 = 2 * F, 2 * F + 1, 2 * F + 2

        k = torch.randn(B, Hkv, N, D, generator=g) * self.noise / math.sqrt(D - c0) * math.sqrt(sd)
        q = torch.randn(B, Hkv, N, D, generator=g) * self.noise / math.sqrt(D - c0) * math.sqrt(sd)
        k[..., :c0] = 0
        q[..., :c0] = 0
        a = math.sqrt(sd)  # amplitude such that (a*x).(a*y)/sqrt(D) = x.y
        k[..., : 2 * F] += a * P * math.sqrt(self.local_logit)
        q[..., : 2 * F] += a * P * math.sqrt(self.local_logit)
        k[:, :, 0, s_dim] += a * math.sqrt(self.sink_logit)
        q[..., s_dim] += a * math.sqrt(self.sink_logit)
        for b in range(B):
            for h in range(Hkv):
                vt = torch.randperm(N - 1, generator=g)[: self.vertical_tokens] + 1
                k[b, h, vt, v_dim] += a * math.sqrt(self.vertical_logit)
                for _ in range(self.needles):
                    t = int(torch.randint(0, max(1, N - 2 * self.window), (1,), generator=g))
                    c = torch.randn(D - c0, generator=g)
                    c = c / c.norm() * a * math.sqrt(self.needle_logit)
                    k[b, h, t, c0:] += c
                    q[b, h, N - self.needle_rows :, c0:] += c
        q[..., v_dim] += a * math.sqrt(self.vertical_logit)
        # heads of one group: the KV head's query pattern, each with its own sharpness
        lo, hi = self.sharpness
        sharp = lo + (hi - lo) * torch.rand(B, Hkv, H // Hkv, 1, 1, generator=g)
        qh = (q[:, :, None] * sharp + 0.1 * torch.randn(B, Hkv, H // Hkv, N, D, generator=g))
        qh = qh.reshape(B, H, N, D)
        v = torch.randn(B, Hkv, N, D, generator=g)
        return (qh.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
