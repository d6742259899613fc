"""``BlockLayout``: the one currency between planning and execution."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor

from .errors import InputError

if TYPE_CHECKING:
    from .problem import AttentionProblem


def lengths(lens: Tensor | None, n: int, batch: int, device: torch.device) -> Tensor:
    """Per-sequence lengths as int64 ``[batch]`` on ``device``; ``None`` means every sequence has length ``n``."""
    return lens.to(device).long() if lens is not None else torch.full((batch,), n, device=device)


def block_geometry(B: int, Nq: int, Nk: int, block_q: int, block_k: int, causal: bool,
                   q_lens: Tensor | None, k_lens: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per (sequence, q-block), int64 ``[B, nQb]``: ``first`` and ``last`` kv-block holding the rows'
    own positions (the diagonal blocks, bottom-right aligned) and ``visible``, the number of
    kv-blocks (a prefix ``0..visible-1``) any row of the q-block may see. Empty q-blocks see 0.

    Absent lengths stay Python ints and the same formulas broadcast from scalars: full causal sequences take
    9 small device ops, done once per geometry: without lengths the result is kept (``_FULL_GEOMETRY``, at most
    ``_FULL_GEOMETRY_MAX`` geometries) and shared by later calls, so callers must not modify it in place."""
    if q_lens is None and k_lens is None:
        key = (B, Nq, Nk, block_q, block_k, bool(causal), device)
        hit = _FULL_GEOMETRY.get(key)
        if hit is not None:
            return hit
        out = _block_geometry(B, Nq, Nk, block_q, block_k, causal, None, None, device)
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if not capturing:  # tensors of a graph's private pool are not kept
            if len(_FULL_GEOMETRY) >= _FULL_GEOMETRY_MAX:
                _FULL_GEOMETRY.pop(next(iter(_FULL_GEOMETRY), None), None)
            _FULL_GEOMETRY[key] = out
        return out
    return _block_geometry(B, Nq, Nk, block_q, block_k, causal, q_lens, k_lens, device)


#: block_geometry results of sequences without lengths, by geometry (oldest dropped first)
_FULL_GEOMETRY: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}
_FULL_GEOMETRY_MAX = 64


def _block_geometry(B: int, Nq: int, Nk: int, block_q: int, block_k: int, causal: bool, q_lens: Tensor | None,
                    k_lens: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    ql = Nq if q_lens is None else q_lens.to(device).long()[:, None]  # int or int64 [B, 1]
    kl = Nk if k_lens is None else k_lens.to(device).long()[:, None]
    nQb = math.ceil(Nq / block_q)
    r0 = torch.arange(0, nQb * block_q, block_q, device=device).expand(B, nQb)  # first row of each q-block
    offset = kl - ql
    # the q-block's last valid row, min(r0 + block_q, ql) - 1, sits at key position
    # min(r0 + block_q - 1 + offset, kl - 1): a valid key, so its block is at most ceil(kl / block_k) - 1
    last = (r0 + (block_q - 1 + offset)).clamp_(max=kl - 1).div_(block_k, rounding_mode="floor")
    first = torch.minimum((r0 + offset).div_(block_k, rounding_mode="floor").clamp_min_(0), last)
    if causal:
        visible = last + 1
    else:
        n_k_blocks = (kl + block_k - 1) // block_k
        visible = (torch.full_like(last, n_k_blocks) if isinstance(n_k_blocks, int)
                   else n_k_blocks.expand_as(last).contiguous())
    if q_lens is not None:  # q-blocks past a sequence's end are empty (full sequences have none)
        visible = torch.where(r0 < ql, visible, 0)
    return first, last, visible


@attrs.frozen(eq=False)
class BlockLayout:
    """Which kv-blocks each (batch, query head, q-block) attends to.

    ``kv_counts`` int32 ``[B, Hq, nQb]``; ``kv_indices`` int32 ``[B, Hq, nQb, max_k]``, ascending in
    each row's first ``count`` entries, padded with 0 after them. ``max_k`` is the largest count used.
    The geometry (``Nq``, ``Nk``, block sizes, causal, per-sequence lengths) travels with the layout so
    it can check itself and report its density.
    """

    kv_counts: Tensor
    kv_indices: Tensor
    Nq: int
    Nk: int
    block_q: int = 128
    block_k: int = 128
    causal: bool = True
    q_lens: Tensor | None = None
    k_lens: Tensor | None = None

    # geometry --------------------------------------------------------------------------------
    @property
    def B(self) -> int:
        return self.kv_counts.shape[0]

    @property
    def H(self) -> int:
        return self.kv_counts.shape[1]

    @property
    def nQb(self) -> int:
        return math.ceil(self.Nq / self.block_q)

    @property
    def nKb(self) -> int:
        return math.ceil(self.Nk / self.block_k)

    @property
    def max_k(self) -> int:
        return self.kv_indices.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.kv_counts.device

    def geometry(self) -> tuple[Tensor, Tensor, Tensor]:
        """``first``, ``last`` diagonal kv-block and ``visible`` blocks per (sequence, q-block)."""
        return block_geometry(self.B, self.Nq, self.Nk, self.block_q, self.block_k, self.causal,
                              self.q_lens, self.k_lens, self.device)

    @classmethod
    def for_problem(cls, problem: AttentionProblem, kv_counts: Tensor, kv_indices: Tensor) -> BlockLayout:
        return cls(kv_counts, kv_indices, problem.Nq, problem.Nk, problem.block_q, problem.block_k,
                   problem.causal, problem.q_lens, problem.k_lens)

    def geometry_of(self, other: BlockLayout) -> BlockLayout:
        """Same indices, geometry copied from ``other`` (used when stitching per-sequence layouts)."""
        return attrs.evolve(self, Nq=other.Nq, Nk=other.Nk, block_q=other.block_q, block_k=other.block_k,
                            causal=other.causal, q_lens=other.q_lens, k_lens=other.k_lens)

    # checks and statistics -------------------------------------------------------------------
    def validate(self) -> BlockLayout:
        """Raise :class:`InputError` unless counts and indices are well formed and inside the visible range."""
        c, idx = self.kv_counts, self.kv_indices
        if c.dtype != torch.int32 or idx.dtype != torch.int32:
            raise InputError(f"kv_counts/kv_indices dtype={c.dtype}/{idx.dtype} (allowed: torch.int32). "
                             "Fix: cast with .to(torch.int32)")
        if c.dim() != 3 or idx.dim() != 4 or tuple(idx.shape[:3]) != tuple(c.shape) or c.shape[2] != self.nQb:
            raise InputError(f"kv_counts.shape={tuple(c.shape)}, kv_indices.shape={tuple(idx.shape)} (allowed: "
                             f"[B, H, {self.nQb}] and [B, H, {self.nQb}, max_k]). Fix: one row per q-block of "
                             f"size {self.block_q} over Nq={self.Nq}")
        if c.device != idx.device:
            raise InputError(f"kv_counts on {c.device}, kv_indices on {idx.device} (allowed: one device). "
                             "Fix: move both to the device of q")
        _, _, visible = self.geometry()
        vis = visible[:, None, :].expand_as(c)
        bad = (c < 0) | (c > vis) | (c > self.max_k)
        if bool(bad.any()):
            b, h, i = (int(x) for x in bad.nonzero()[0])
            raise InputError(f"kv_counts[{b}, {h}, {i}]={int(c[b, h, i])} (allowed: 0..{int(vis[b, h, i])}, the "
                             f"visible kv-blocks of that q-block, and <= max_k={self.max_k}). Fix: clamp the budget")
        if self.max_k:
            slot = torch.arange(self.max_k, device=idx.device)
            used = slot < c[..., None]
            out_of_range = used & ((idx < 0) | (idx >= vis[..., None]))
            unsorted = used[..., 1:] & (idx[..., 1:] <= idx[..., :-1])
            for name, m in (("out of the visible range", out_of_range), ("not strictly ascending", unsorted)):
                if bool(m.any()):
                    b, h, i, s = (int(x) for x in m.nonzero()[0])
                    raise InputError(f"kv_indices[{b}, {h}, {i}] = {idx[b, h, i, : int(c[b, h, i])].tolist()} is "
                                     f"{name} (allowed: ascending distinct blocks in [0, {int(vis[b, h, i])})). "
                                     "Fix: sort and deduplicate the indices of each row")
        return self

    def visible_blocks(self) -> int:
        _, _, visible = self.geometry()
        return int(visible.sum()) * self.H

    def num_kept(self) -> int:
        return int(self.kv_counts.sum())

    def density(self) -> float:
        """Kept blocks / visible (causal) blocks, over the whole batch and all heads."""
        vis = self.visible_blocks()
        return self.num_kept() / vis if vis else 0.0

    def density_per_head(self) -> Tensor:
        """float32 ``[B, H]``: kept / visible blocks of each head."""
        _, _, visible = self.geometry()
        return self.kv_counts.sum(-1).float() / visible.sum(-1, keepdim=True).clamp_min(1).float()

    # conversions -----------------------------------------------------------------------------
    def to_dense(self) -> Tensor:
        """Bool ``[B, H, nQb, nKb]`` block mask (for small sizes, tests and plots)."""
        mask = torch.zeros(self.B, self.H, self.nQb, self.nKb + 1, dtype=torch.bool, device=self.device)
        slot = torch.arange(self.max_k, device=self.device)
        idx = torch.where(slot < self.kv_counts[..., None], self.kv_indices.long(), self.nKb)
        mask.scatter_(-1, idx, True)
        return mask[..., : self.nKb]

    @classmethod
    def from_dense(cls, mask: Tensor, Nq: int, Nk: int, *, block_q: int = 128, block_k: int = 128,
                   causal: bool = True, q_lens: Tensor | None = None, k_lens: Tensor | None = None) -> BlockLayout:
        """Build a layout from a bool block mask ``[B, H, nQb, nKb]``."""
        if mask.dtype != torch.bool or mask.dim() != 4:
            raise InputError(f"mask dtype={mask.dtype} shape={tuple(mask.shape)} (allowed: bool [B, H, nQb, nKb]). "
                             "Fix: pass a boolean block mask")
        counts = mask.sum(-1, dtype=torch.int32)
        max_k = int(counts.max()) if counts.numel() else 0
        nKb = mask.shape[-1]
        key = torch.where(mask, torch.arange(nKb, device=mask.device), nKb)  # kept blocks sort first
        idx = key.sort(-1).values[..., :max_k]
        idx = torch.where(idx == nKb, 0, idx).to(torch.int32).contiguous()
        return cls(counts, idx, Nq, Nk, block_q, block_k, causal, q_lens, k_lens)

    @classmethod
    def full(cls, problem: AttentionProblem) -> BlockLayout:
        """Every visible block: the layout of dense attention."""
        _, _, visible = problem.block_bounds()
        counts = visible[:, None, :].expand(problem.B, problem.Hq, problem.nQb).to(torch.int32).contiguous()
        max_k = int(visible.max()) if visible.numel() else 0
        idx = torch.arange(max_k, device=problem.device, dtype=torch.int32)
        idx = torch.where(idx < counts[..., None], idx, 0).to(torch.int32).contiguous()
        return cls.for_problem(problem, counts, idx)

    @staticmethod
    def stack(parts: list[BlockLayout], like: BlockLayout) -> BlockLayout:
        """Stack per-sequence layouts ``[1, H, nQb_b, ...]`` into one batch with ``like``'s geometry."""
        max_k = max(p.max_k for p in parts)
        B, H, nQb = len(parts), parts[0].H, like.nQb
        counts = parts[0].kv_counts.new_zeros((B, H, nQb))
        idx = parts[0].kv_indices.new_zeros((B, H, nQb, max_k))
        for b, p in enumerate(parts):
            counts[b, :, : p.nQb] = p.kv_counts[0]
            idx[b, :, : p.nQb, : p.max_k] = p.kv_indices[0]
        return attrs.evolve(like, kv_counts=counts, kv_indices=idx)

    def to_flex_block_mask(self) -> Any:
        """The same layout as a FlexAttention ``BlockMask`` (built with ``BlockMask.from_kv_blocks``).

        Blocks strictly inside the causal/valid region are passed as full blocks, the others (diagonal,
        ragged tails) as partial blocks with a ``mask_mod`` applying bottom-right causality and the
        per-sequence lengths. Imports ``torch.nn.attention.flex_attention`` lazily.

        Only compiled ``flex_attention`` honours the block tables: eager FlexAttention applies the
        ``mask_mod`` alone (dense attention under the causal/length mask). The ``flex`` kernel stage
        handles this by folding the layout into ``mask_mod`` when ``compile=False``.
        """
        from torch.nn.attention.flex_attention import BlockMask

        dev = self.device
        first, _, _ = self.geometry()
        ql, kl = lengths(self.q_lens, self.Nq, self.B, dev), lengths(self.k_lens, self.Nk, self.B, dev)
        nKb, slot = self.nKb, torch.arange(self.max_k, device=dev)
        idx = self.kv_indices.long()
        used = slot < self.kv_counts[..., None]
        rows_end = (torch.arange(self.nQb, device=dev) + 1) * self.block_q  # [nQb]
        partial_row = (rows_end[None, :] > ql[:, None])[:, None, :, None]  # q-block has padded rows
        partial = ((idx + 1) * self.block_k > kl[:, None, None, None]) | partial_row
        if self.causal:
            partial = partial | (idx >= first[:, None, :, None])

        def compact(sel: Tensor) -> tuple[Tensor, Tensor]:
            key = torch.where(sel, idx, nKb).sort(-1).values
            key = torch.nn.functional.pad(key, (0, nKb - key.shape[-1]), value=nKb)[..., :nKb]
            return sel.sum(-1, dtype=torch.int32), torch.where(key == nKb, 0, key).to(torch.int32).contiguous()

        n_part, i_part = compact(used & partial)
        n_full, i_full = compact(used & ~partial)
        off = kl - ql
        causal = self.causal

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            ok = (kv_idx < kl[b]) & (q_idx < ql[b])
            if causal:
                ok = ok & (kv_idx <= q_idx + off[b])
            return ok

        return BlockMask.from_kv_blocks(n_part, i_part, n_full, i_full, BLOCK_SIZE=(self.block_q, self.block_k),
                                        mask_mod=mask_mod, seq_lengths=(self.Nq, self.Nk))

    def to(self, device: torch.device | str) -> BlockLayout:
        mv = (lambda t: None if t is None else t.to(device))
        return attrs.evolve(self, kv_counts=self.kv_counts.to(device), kv_indices=self.kv_indices.to(device),
                            q_lens=mv(self.q_lens), k_lens=mv(self.k_lens))
