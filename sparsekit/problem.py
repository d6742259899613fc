"""The attention problem: q/k, block sizes, causal alignment and per-sequence lengths, validated."""

from __future__ import annotations

import math
from functools import cached_property

import attrs
import torch
from torch import Tensor

from .errors import InputError, invalid
from .layout import block_geometry, lengths

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
BLOCK_SIZES = (16, 32, 64, 128, 256, 512)


def _check_block(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in BLOCK_SIZES:
        raise invalid(name, value, f"a power of two in {BLOCK_SIZES}", f"pass {name}=128 (the default) or 64")
    return value


def _check_lens(name: str, lens: Tensor | None, batch: int, limit: int,
                device: torch.device) -> tuple[Tensor | None, list[int] | None]:
    """The lengths as int32 ``[batch]`` on ``device`` and as a list (one host read: a sync for CUDA lengths)."""
    if lens is None:
        return None, None
    if not isinstance(lens, Tensor):
        lens = torch.as_tensor(lens)
    if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.dim() != 1 or lens.shape[0] != batch:
        raise invalid(name, f"tensor(shape={tuple(lens.shape)}, dtype={lens.dtype})",
                      f"an integer tensor of shape [{batch}] (one length per sequence)",
                      f"pass {name}=torch.tensor([...], dtype=torch.int32) with B entries")
    values = lens.tolist()
    if min(values) < 1 or max(values) > limit:
        raise invalid(name, values, f"lengths in [1, {limit}] (empty sequences are not allowed)",
                      f"drop empty sequences from the batch and keep every length <= the padded size {limit}")
    return lens.to(device=device, dtype=torch.int32), values


@attrs.frozen(eq=False)
class AttentionProblem:
    """One attention call: ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]`` and how they are blocked.

    Causal masks are bottom-right aligned: query row ``r`` of sequence ``b`` sits at absolute
    position ``k_len(b) - q_len(b) + r``. Per-sequence lengths (``q_lens``/``k_lens``, int32 ``[B]``)
    mark the valid prefix of each padded sequence; ``None`` means every sequence is full.
    """

    q: Tensor
    k: Tensor
    block_q: int = 128
    block_k: int = 128
    causal: bool = True
    q_lens: Tensor | None = None
    k_lens: Tensor | None = None
    scale: float | None = None

    @classmethod
    def create(cls, q: Tensor, k: Tensor, v: Tensor | None = None, *, block_q: int = 128, block_k: int = 128,
               causal: bool = True, q_lens: Tensor | None = None, k_lens: Tensor | None = None,
               scale: float | None = None) -> AttentionProblem:
        """Validate the inputs and build the problem; raises :class:`InputError` naming the fix."""
        validate_qkv(q, k, v)
        block_q, block_k = _check_block("block_q", block_q), _check_block("block_k", block_k)
        B, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
        q_lens, ql = _check_lens("q_lens", q_lens, B, Nq, q.device)
        k_lens, kl = _check_lens("k_lens", k_lens, B, Nk, q.device)
        if causal:
            ql = ql if ql is not None else [Nq] * B
            kl = kl if kl is not None else [Nk] * B
            bad = [b for b in range(B) if ql[b] > kl[b]]
            if bad:
                b = bad[0]
                raise invalid("q_lens", ql[b], f"at most the key length k_lens[{b}]={kl[b]} under causal attention "
                              "(bottom-right alignment: queries are the last tokens of the keys)",
                              "pass the full key/value cache for every query, or causal=False")
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise invalid("scale", scale, "a finite positive float or None (1/sqrt(D))", "pass scale=None")
        return cls(q, k, block_q, block_k, bool(causal), q_lens, k_lens, None if scale is None else float(scale))

    # shapes ----------------------------------------------------------------------------------
    @property
    def B(self) -> int:
        return self.q.shape[0]

    @property
    def Hq(self) -> int:
        return self.q.shape[1]

    @property
    def Hkv(self) -> int:
        return self.k.shape[1]

    @property
    def Nq(self) -> int:
        return self.q.shape[2]

    @property
    def Nk(self) -> int:
        return self.k.shape[2]

    @property
    def D(self) -> int:
        return self.q.shape[3]

    @property
    def group_size(self) -> int:
        return self.Hq // self.Hkv

    @property
    def nQb(self) -> int:
        return math.ceil(self.Nq / self.block_q)

    @property
    def nKb(self) -> int:
        return math.ceil(self.Nk / self.block_k)

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def softmax_scale(self) -> float:
        return 1.0 / math.sqrt(self.D) if self.scale is None else self.scale

    @property
    def is_varlen(self) -> bool:
        return self.q_lens is not None or self.k_lens is not None

    @cached_property
    def q_len_list(self) -> list[int]:
        return self.q_lens.tolist() if self.q_lens is not None else [self.Nq] * self.B

    @cached_property
    def k_len_list(self) -> list[int]:
        return self.k_lens.tolist() if self.k_lens is not None else [self.Nk] * self.B

    def lens(self) -> tuple[Tensor, Tensor]:
        """Per-sequence lengths as int64 tensors ``[B]`` on the problem's device (filled when absent)."""
        dev = self.device
        ql, kl = lengths(self.q_lens, self.Nq, self.B, dev), lengths(self.k_lens, self.Nk, self.B, dev)
        return ql, kl

    # block geometry --------------------------------------------------------------------------
    def block_bounds(self) -> tuple[Tensor, Tensor, Tensor]:
        """``first``/``last`` diagonal kv-block and ``visible`` kv-blocks per (sequence, q-block), int64 ``[B, nQb]``
        (see :func:`sparsekit.layout.block_geometry`). Computed once per problem (budget and mask both read
        them): the tensors are shared, so do not modify them in place."""
        return self._block_bounds

    @cached_property
    def _block_bounds(self) -> tuple[Tensor, Tensor, Tensor]:
        return block_geometry(self.B, self.Nq, self.Nk, self.block_q, self.block_k, self.causal,
                              self.q_lens, self.k_lens, self.device)

    def visible_mask(self) -> Tensor:
        """Bool ``[B, nQb, nKb]``: kv-blocks a q-block may attend to (causal prefix, valid keys)."""
        _, _, visible = self.block_bounds()
        j = torch.arange(self.nKb, device=self.device)
        return j[None, None, :] < visible[:, :, None]

    def sequence(self, b: int) -> AttentionProblem:
        """The problem of sequence ``b`` alone, trimmed to its valid length."""
        ql, kl = self.q_len_list[b], self.k_len_list[b]
        return attrs.evolve(self, q=self.q[b : b + 1, :, :ql], k=self.k[b : b + 1, :, :kl], q_lens=None, k_lens=None)

    def describe(self) -> str:
        lens = " varlen" if self.is_varlen else ""
        return (f"B={self.B} Hq={self.Hq} Hkv={self.Hkv} Nq={self.Nq} Nk={self.Nk} D={self.D} "
                f"{str(self.q.dtype).replace('torch.', '')} {self.device.type} blocks={self.block_q}x{self.block_k}"
                f"{' causal' if self.causal else ''}{lens}")


def validate_qkv(q: Tensor, k: Tensor, v: Tensor | None = None) -> None:
    """Check ranks, shapes, dtypes and devices of q/k/v; raise :class:`InputError` with the fix."""
    named = [("q", q), ("k", k)] + ([("v", v)] if v is not None else [])
    for name, t in named:
        if not isinstance(t, Tensor):
            raise invalid(name, type(t).__name__, "a torch.Tensor", f"pass {name} as a torch tensor")
        if t.dim() != 4:
            raise invalid(f"{name}.shape", tuple(t.shape), "4 dims [B, H, N, D] (torch SDPA layout)",
                          f"reshape {name}: for [B, N, H, D] inputs use {name}.transpose(1, 2)")
        if t.dtype not in SUPPORTED_DTYPES:
            raise invalid(f"{name}.dtype", t.dtype, "float32, float16, bfloat16 (float64 for references)",
                          f"cast with {name}.to(torch.bfloat16)")
        if t.numel() == 0:
            raise invalid(f"{name}.shape", tuple(t.shape), "no empty dimension", "drop empty sequences or heads")
    for name, t in named[1:]:
        if t.device != q.device:
            raise invalid(f"{name}.device", str(t.device), f"the device of q ({q.device})",
                          f"move every tensor to one device: {name}.to(q.device)")
        if t.dtype != q.dtype:
            raise invalid(f"{name}.dtype", t.dtype, f"the dtype of q ({q.dtype})", f"cast: {name}.to(q.dtype)")
    B, Hq, _, D = q.shape
    Bk, Hkv, Nk, Dk = k.shape
    if Bk != B:
        raise invalid("k.shape[0]", Bk, f"the batch size of q ({B})", "pass q and k with the same batch size")
    if Dk != D:
        raise invalid("k.shape[3]", Dk, f"the head dim of q ({D})", "q and k need the same head dim")
    if Hq % Hkv != 0:
        raise invalid("k.shape[1]", Hkv, f"a divisor of the {Hq} query heads (GQA groups of equal size)",
                      "check the head counts: Hq must be a multiple of Hkv")
    if v is not None:
        if tuple(v.shape[:3]) != (B, Hkv, Nk):
            raise invalid("v.shape", tuple(v.shape), f"[{B}, {Hkv}, {Nk}, Dv] matching k", "pass v with k's layout")


def check_finite(**tensors: Tensor) -> None:
    """Raise :class:`InputError` if any tensor holds NaN or inf (opt-in: it costs one pass and a sync)."""
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise InputError(f"{name} contains NaN or inf values (allowed: finite values). Fix: check the "
                             "model's activations, or build with check_finite=False to let them propagate")
