"""Launcher of the Triton last-block mass kernels (contract: ``naive.py``'s docstring).

``last_block_mass`` validates its inputs with ``not_supported_reasons`` (one ``ValueError`` listing every
problem), splits the keys into ranges of whole kv-blocks and launches ``kernel._lbm_row_stats`` then
``kernel._lbm_block_mass``. Allocated: the output ``[B, Hq, nKb]`` float32, two partial-statistics
buffers ``[B, Hq, n_split, BLOCK_M]`` float32 (``n_split <= 64``) and, on the one-pass path, the per-tile row
statistics (``tile_stats_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
from torch import Tensor

from .._checks import fmt_ints, interpreted, qk_reasons
from .._launch import launch, on_device
from .._triton_common import one_pass_for, pool_chunk_for, pow2_at_least
from . import kernel as _kernel


def _detect_interpreter() -> bool:
    return interpreted(_kernel._lbm_row_stats)


#: True when the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 at import).
_INTERPRET: bool = _detect_interpreter()

#: Programs to aim for (heads x key splits): enough to fill a large GPU several times over.
TARGET_PROGRAMS = 1024
MAX_SPLITS = 64


@dataclass(frozen=True)
class Capabilities:
    """What ``last_block_mass`` accepts, as data."""

    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...]
    devices: tuple[str, ...]
    block_sizes: tuple[int, ...]
    gqa: bool
    causal: bool
    non_causal: bool
    varlen: bool  # per-sequence lengths: no (call it per trimmed sequence)


CAPABILITIES = Capabilities(
    dtypes=(torch.bfloat16, torch.float16, torch.float32),
    head_dims=(16, 32, 64, 128, 256),
    devices=("cuda", "cpu") if _INTERPRET else ("cuda",),
    block_sizes=(16, 32, 64, 128, 256),
    gqa=True,
    causal=True,
    non_causal=True,
    varlen=False,
)


@dataclass(frozen=True)
class KernelConfig:
    """Kernel tiling: ``block_n`` keys per tile (a power of two >= 16 dividing ``block_k``);
    ``split_blocks`` kv-blocks per key split (``None``: aim at ``TARGET_PROGRAMS`` programs); ``one_pass``: walk the
    keys once, keeping each tile's row statistics in a float32 scratch for the block sums (``None``: when the
    scratch fits, ``one_pass_for`` with ``tile_stats_bytes``)."""

    block_n: int
    num_warps: int
    num_stages: int
    split_blocks: int | None = None
    one_pass: bool | None = None


def tile_stats_bytes(heads: int, n_kb: int, block_k: int, block_n: int, block_m: int) -> int:
    """Bytes of the one-pass scratch: a float32 (max, sum) pair per row of the ``block_m`` row tile, kv-tile and
    head (``heads`` = B x Hq): 64 MiB for the Llama-3.1-8B shape at 128K (64-key tiles), 512 MiB at 1M."""
    return 8 * heads * n_kb * (block_k // block_n) * block_m


def default_config(head_dim: int, dtype: torch.dtype, block_k: int, rows: int) -> KernelConfig:
    """Tile by head dim and dtype (the row tile is the ``min(block_q, Nq)`` rows), clamped to the block."""
    if dtype == torch.float32:
        bn, warps, stages = 32, 4, 2
    elif head_dim > 128 or rows > 128:
        bn, warps, stages = 64, 8, 2
    else:
        bn, warps, stages = 64, 4 if rows <= 64 else 8, 3
    return KernelConfig(min(bn, block_k), warps, stages)


def split_blocks_for(heads: int, n_kb: int) -> int:
    """kv-blocks per key split: about ``TARGET_PROGRAMS`` programs, at most ``MAX_SPLITS`` splits per head."""
    splits = max(1, min(MAX_SPLITS, TARGET_PROGRAMS // max(heads, 1), n_kb))
    return math.ceil(n_kb / splits)


def not_supported_reasons(q: Tensor, k: Tensor, *, block_q: int = 128, block_k: int = 128) -> list[str]:
    """Every reason the Triton kernels cannot run these inputs (empty list: supported).

    Each reason names the field, its value, the supported values and a fix.
    """
    caps = CAPABILITIES
    reasons = qk_reasons(q, k, dtypes=caps.dtypes, devices=caps.devices, head_dims=caps.head_dims,
                         interpret=_INTERPRET)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k)):
        return reasons  # shapes cannot be read
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    for name, bs in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(bs, bool) or not isinstance(bs, int) or bs not in caps.block_sizes:
            reasons.append(f"{name}={bs!r} (supported: {fmt_ints(caps.block_sizes)}): use a supported block "
                           "size or impl='torch'")
    if Nq < 1 or Nk < 1:
        reasons.append(f"Nq={Nq}, Nk={Nk} (supported: >= 1 each): drop empty sequences")
    return reasons


def _resolve_config(config, head_dim, dtype, block_k, rows) -> KernelConfig:
    cfg = default_config(head_dim, dtype, block_k, rows)
    if config is None:
        return cfg
    if isinstance(config, KernelConfig):
        cfg = config
    elif isinstance(config, Mapping):
        unknown = set(config) - {"block_n", "num_warps", "num_stages", "split_blocks", "one_pass"}
        if unknown:
            raise ValueError(f"config keys {sorted(unknown)} (supported: block_n, num_warps, num_stages, "
                             "split_blocks, one_pass): drop the unknown keys")
        cfg = replace(cfg, **dict(config))
    else:
        raise ValueError(f"config={config!r} (supported: None, KernelConfig or a dict of block_n/num_warps/"
                         "num_stages/split_blocks/one_pass): pass one of those")
    bad = []
    if cfg.block_n < 16 or cfg.block_n & (cfg.block_n - 1) or block_k % cfg.block_n:
        bad.append(f"config.block_n={cfg.block_n} (supported: a power of two >= 16 dividing block_k={block_k}): "
                   "pick a tile that divides block_k")
    if cfg.num_warps not in (1, 2, 4, 8, 16):
        bad.append(f"config.num_warps={cfg.num_warps} (supported: 1, 2, 4, 8, 16): pick one of those")
    if cfg.num_stages < 1:
        bad.append(f"config.num_stages={cfg.num_stages} (supported: >= 1): pick a positive number")
    if cfg.split_blocks is not None and (isinstance(cfg.split_blocks, bool) or not isinstance(cfg.split_blocks, int)
                                         or cfg.split_blocks < 1):
        bad.append(f"config.split_blocks={cfg.split_blocks!r} (supported: None or an integer >= 1): pass None")
    if cfg.one_pass is not None and not isinstance(cfg.one_pass, bool):
        bad.append(f"config.one_pass={cfg.one_pass!r} (supported: None for automatic, True, False): pick one of "
                   "those")
    if bad:
        raise ValueError("last_block_mass: unsupported config:\n  - " + "\n  - ".join(bad))
    return cfg


def last_block_mass(
    q: Tensor,
    k: Tensor,
    *,
    block_q: int = 128,
    block_k: int = 128,
    causal: bool = True,
    scale: float | None = None,
    config: KernelConfig | Mapping[str, Any] | None = None,
    checked: bool = False,
) -> Tensor:
    """Per-head last-block attention mass per kv-block with the Triton kernels (same contract as
    ``last_block_mass_naive``). Returns float32 ``[B, Hq, nKb]``.

    ``config``: optional override (``KernelConfig`` or a dict of ``block_n``, ``num_warps``, ``num_stages``,
    ``split_blocks``, ``one_pass``) for tuning; default from ``default_config`` and ``split_blocks_for``.
    ``checked=True``: the caller already ran ``not_supported_reasons`` on these inputs and got no reason, so
    they are not checked twice (saves host time per call); ``scale`` is still checked.
    """
    reasons = [] if checked else not_supported_reasons(q, k, block_q=block_q, block_k=block_k)
    if scale is None and not reasons:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if scale is not None:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0.0:
            reasons.append(f"scale={scale} (supported: finite and > 0): pass scale=None (1/sqrt(D))")
    if reasons:
        raise ValueError("last_block_mass: inputs not supported by the Triton kernels:\n  - " + "\n  - ".join(reasons))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    rows = min(block_q, Nq)
    cfg = _resolve_config(config, D, q.dtype, block_k, rows)
    n_kb = math.ceil(Nk / block_k)
    split_blocks = cfg.split_blocks or split_blocks_for(B * Hq, n_kb)
    n_split = math.ceil(n_kb / split_blocks)
    block_m = pow2_at_least(rows)

    out = torch.empty((B, Hq, n_kb), dtype=torch.float32, device=q.device)
    m_part = torch.empty((B, Hq, n_split, block_m), dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    n_tiles = n_kb * (block_k // cfg.block_n)
    nbytes = tile_stats_bytes(B * Hq, n_kb, block_k, cfg.block_n, block_m)
    one_pass = one_pass_for(nbytes, cfg.one_pass)
    # one pass: per-tile row statistics, uninitialised (the block sums read only the tiles the stats wrote)
    t_max = torch.empty(nbytes // 8, dtype=torch.float32, device=q.device) if one_pass else m_part
    t_sum = torch.empty_like(t_max) if one_pass else l_part  # (unused pointers with two passes)
    grid = (B * Hq, n_split)
    common = dict(HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=cfg.block_n, CAUSAL=bool(causal),
                  IEEE_DOT=q.dtype == torch.float32, UPCAST_DOT=_INTERPRET and q.dtype == torch.bfloat16,
                  ONE_PASS=one_pass)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, device=q.device)
    qk_scale = scale * 1.4426950408889634  # log2(e) folded into the scale
    strides = (q.stride(0), q.stride(1), q.stride(2), q.stride(3), k.stride(0), k.stride(1), k.stride(2), k.stride(3))
    sizes = (Hq, Hq // Hkv, Nq, Nk, rows, split_blocks * block_k, n_split, n_tiles)
    with on_device(q.device):
        launch(_kernel._lbm_row_stats, grid, (q, k, m_part, l_part, t_max, t_sum, qk_scale, *strides, *sizes),
               common, **opts)
        launch(_kernel._lbm_block_mass, grid,
               (q, k, m_part, l_part, t_max, t_sum, out, qk_scale, 1.0 / rows, *strides, out.stride(0), out.stride(1),
                *sizes),
               dict(common, BLOCK_K=block_k, CHUNK=min(pool_chunk_for(block_m), pow2_at_least(split_blocks))),
               **opts)
    return out
