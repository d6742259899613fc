"""Launcher of the Triton block-sparse attention forward (contract: ``naive.py``'s docstring).

``block_sparse_attention`` validates its inputs with ``not_supported_reasons`` (raising one
``ValueError`` that lists every problem) and launches ``kernel._block_sparse_attn_fwd``. Nothing is
allocated besides the output (unless ``out=`` is given) and the log-sum-exp (when asked); with
``KernelConfig(use_tma=True, tma_descriptor="device")`` Triton also allocates its descriptor scratch
through ``triton.set_allocator`` (set here, once, only when no allocator was set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import torch
from torch import Tensor

from .._checks import fmt_dtypes, fmt_ints, interpreted
from .._launch import Launch, device_index, on_device
from . import kernel as _kernel


def _detect_interpreter() -> bool:
    return interpreted(_kernel._block_sparse_attn_fwd)


#: True when the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 at import).
_INTERPRET: bool = _detect_interpreter()


@dataclass(frozen=True)
class Capabilities:
    """What ``block_sparse_attention`` accepts, as data."""

    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...]
    devices: tuple[str, ...]
    block_sizes: tuple[int, ...]  # allowed layout block_q / block_k (powers of two)
    index_dtype: torch.dtype  # kv_counts / kv_indices
    len_dtypes: tuple[torch.dtype, ...]  # q_lens / k_lens
    gqa: bool
    varlen: bool
    causal: bool
    non_causal: bool
    lse: bool
    out_buffer: bool
    min_compute_capability: tuple[int, int]


CAPABILITIES = Capabilities(
    dtypes=(torch.bfloat16, torch.float16, torch.float32),
    head_dims=(16, 32, 64, 128, 256),
    devices=("cuda", "cpu") if _INTERPRET else ("cuda",),
    block_sizes=(16, 32, 64, 128, 256),
    index_dtype=torch.int32,
    len_dtypes=(torch.int32, torch.int64),
    gqa=True,
    varlen=True,
    causal=True,
    non_causal=True,
    lse=True,
    out_buffer=True,
    min_compute_capability=(8, 0),
)


#: KernelConfig.tma_descriptor values
TMA_DESCRIPTORS = ("host", "device")
#: kernel TMA modes (constexpr TMA): K/V loaded with pointers, device-side or host-side descriptors
TMA_OFF, TMA_DEVICE, TMA_HOST = 0, 1, 2
#: TMA needs Hopper (sm_90) or newer
TMA_MIN_COMPUTE_CAPABILITY = (9, 0)


def _tma_api_missing(kind: str) -> str | None:
    """Why this triton cannot build ``kind`` ("host" / "device") descriptors (None: it can)."""
    import triton
    import triton.language as tl

    if kind == "device":
        if not hasattr(tl, "make_tensor_descriptor") or not hasattr(triton, "set_allocator"):
            return f"triton {triton.__version__} has no tl.make_tensor_descriptor / triton.set_allocator"
        return None
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return f"triton {triton.__version__} has no triton.tools.tensor_descriptor.TensorDescriptor"
    return None


@dataclass(frozen=True)
class KernelConfig:
    """Kernel tiling: ``block_m`` must divide ``block_q``, ``block_n`` must divide ``block_k``.

    ``use_tma``: load K/V tiles with Hopper TMA (tensor descriptors); needs compute capability >= 9.0
    (or the interpreter). ``tma_descriptor``: ``"host"`` (one ``TensorDescriptor`` over the 2-D view
    ``[B * Hkv * Nk, D]``, built per call; needs K/V with collapsible ``B, H, N`` strides) or
    ``"device"`` (``tl.make_tensor_descriptor`` per program over its KV head; any 16-byte aligned
    strides). When the tensors do not qualify the kernel silently uses pointer loads instead
    (``tma_mode`` tells which path a call takes).
    ``one_loop``: walk every kept tile in one pipelined loop and mask (causal / sequence end) only the tiles
    that need it, instead of a mask-free loop followed by a second, masked loop. It saves the second loop's
    pipeline fill per program (a fixed cost that dominates short rows) but needs more shared memory per stage.
    ``m_chunk``: the order in which programs start (results are identical in every order; ``default_config``
    uses ``DEFAULT_M_CHUNK``). ``0``: all heads of one q-tile, then the next q-tile (heaviest q-tiles first
    under causal). ``n > 0``: chunks of ``n`` consecutive q-tiles, heaviest chunk first; inside a chunk head after
    head (the query heads of one KV group next to each other), each head's ``n`` q-tiles together, so that the
    programs running at once read the K/V of fewer KV heads and share more of them through L2.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    use_tma: bool = False
    tma_descriptor: str = "host"
    one_loop: bool = False
    m_chunk: int = 0  # default_config sets DEFAULT_M_CHUNK


def default_config(head_dim: int, dtype: torch.dtype, block_q: int, block_k: int) -> KernelConfig:
    """Tile sizes by head dim and dtype (H100-oriented), clamped to the layout blocks."""
    if dtype == torch.float32:  # IEEE fp32 dot (tests / debugging), no tensor cores
        bm, bn, warps, stages = (32, 32, 4, 2) if head_dim > 128 else (64, 32, 4, 2)
    elif head_dim > 128:  # fp32 acc of 64x256 is already 64 regs/thread with 8 warps
        bm, bn, warps, stages = 64, 64, 8, 2
    elif head_dim > 64:
        # D=128: 128x128 tiles with 5 stages (K/V triple-buffered, 229 KB of shared memory) measured fastest on
        # an H100: 500 effective TFLOP/s at 32K vs 449 with 3 stages and 365 with 128x64 tiles
        # (benchmarks/results/kernel_variants_h100_2026-11-28.json); GPUs with less shared memory fall back
        # to fewer stages at the first launch
        bm, bn, warps, stages = 128, 128, 8, 5
    else:
        bm, bn, warps, stages = 128, 64, 4, 3
    bm, bn = min(bm, block_q), min(bn, block_k)
    if bm < 64:
        warps = min(warps, 4)
    return KernelConfig(bm, bn, warps, stages, m_chunk=DEFAULT_M_CHUNK)


#: Program order of the default config (``KernelConfig.m_chunk``): 32 q-tiles of one head start together, the
#: query heads of a KV group one after the other. On an H200 at 128K (``kernel_grid_order_h200_2026-12-03.json``)
#: it cut ProxyAttn's planned layouts by 11% / 9% (density 0.094: 30.92 -> 27.37 ms; 0.078: 25.24 -> 23.02 ms),
#: scattered per-head blocks at density 0.1 / 0.05 by 5% / 3% (30.88 -> 29.23, 16.60 -> 16.07 ms) and density
#: 1.0 by 2.5% (284.9 -> 277.7 ms) against all heads of a q-tile together (``m_chunk=0``); 8, 16 and 64 were at
#: most as good. Outputs are bitwise the same in every order.
DEFAULT_M_CHUNK = 32


#: Key lengths up to which the default D=128 config becomes ``short_sequence_config``'s one loop with host TMA
ONE_LOOP_MAX_NK = 32768


def short_sequence_config(cfg: KernelConfig, head_dim: int, k: Tensor, v: Tensor, device: torch.device, *,
                          interpret: bool | None = None, capability: tuple[int, int] | None = None) -> KernelConfig:
    """The default config for this call: at ``Nk <= ONE_LOOP_MAX_NK`` with D=128, 128x128 tiles, a Hopper (or
    newer) GPU and K/V that a host TMA descriptor can cover, one loop with host TMA loads and 3 stages (what
    fits in shared memory); otherwise ``cfg`` unchanged.

    Rows are short there, so the per-program fixed cost of the two-loop kernel weighs most: on an H200 the
    one-loop config is 10-14% faster at 8K and densities 0.1/0.05, 4.6% at 32K and density 0.05, level at
    32K otherwise, but 1-2% slower at 128K (``benchmarks/results/kernel_one_loop_h200_2026-11-28.json``).
    ``interpret`` / ``capability`` override the detected interpreter mode / compute capability (tests).
    """
    interpret = _INTERPRET if interpret is None else interpret
    if interpret or device.type != "cuda" or head_dim != 128 or (cfg.block_m, cfg.block_n) != (128, 128):
        return cfg
    if k.shape[2] > ONE_LOOP_MAX_NK:
        return cfg
    key = (cfg, device.type, device.index, capability)
    if key not in _SHORT_SEQUENCE_ALT:  # per config and device: the capability / triton API checks
        alt = replace(cfg, num_stages=3, use_tma=True, tma_descriptor="host", one_loop=True)
        ok = not tma_config_reasons(alt, device, interpret=False, capability=capability)
        _SHORT_SEQUENCE_ALT[key] = alt if ok else None
    alt = _SHORT_SEQUENCE_ALT[key]
    if alt is None or tma_mode(alt, k, v) != TMA_HOST:  # per call: K/V strides and alignment
        return cfg
    return alt


# (default config, device type, device index, capability override) -> short_sequence_config's config, or None
_SHORT_SEQUENCE_ALT: dict[tuple, KernelConfig | None] = {}


def not_supported_reasons(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_counts: Tensor,
    kv_indices: Tensor,
    *,
    block_q: int,
    block_k: int,
    q_lens: Tensor | None = None,
    k_lens: Tensor | None = None,
) -> list[str]:
    """Every reason the Triton kernel cannot run these inputs (empty list: supported).

    Each reason names the field, its value, the supported values and a fix. The checks read only the tensors'
    metadata (shape, strides, dtype, device), so the answer is kept per signature (bounded, like the prepared
    calls; ``clear_call_cache`` forgets it): a pipeline asks before every call, and the full check costs ~16 us
    of host time.
    """
    try:
        key = (_meta(q), _meta(k), _meta(v), _meta(kv_counts), _meta(kv_indices), _meta(q_lens), _meta(k_lens),
               block_q, block_k)
        hash(key)
    except (AttributeError, TypeError, RuntimeError):
        return _reasons(q, k, v, kv_counts, kv_indices, block_q, block_k, q_lens, k_lens)
    cached = _REASONS.get(key)
    if cached is None:
        cached = _remember(_REASONS, key, tuple(_reasons(q, k, v, kv_counts, kv_indices, block_q, block_k, q_lens,
                                                         k_lens)))
    return list(cached)  # callers may append to it


def _reasons(q, k, v, kv_counts, kv_indices, block_q, block_k, q_lens, k_lens) -> list[str]:
    caps = CAPABILITIES
    reasons: list[str] = []
    named = {"q": q, "k": k, "v": v, "kv_counts": kv_counts, "kv_indices": kv_indices}
    if q_lens is not None:
        named["q_lens"] = q_lens
    if k_lens is not None:
        named["k_lens"] = k_lens
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            reasons.append(f"{name} is a {type(t).__name__} (supported: torch.Tensor): pass a tensor")
    if reasons:
        return reasons

    # ranks
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            reasons.append(
                f"{name}.dim()={t.dim()} (supported: 4, [B, H, N, D]): reshape {name} to [B, H, N, D]"
            )
    if reasons:
        return reasons
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nk, Dk = k.shape

    # dtypes
    supported_dt = fmt_dtypes(caps.dtypes)
    if q.dtype not in caps.dtypes:
        reasons.append(
            f"q.dtype={fmt_dtypes([q.dtype])} (supported: {supported_dt}): cast q, k, v to bfloat16/float16 "
            "or use kernel='torch'"
        )
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            reasons.append(
                f"{name}.dtype={fmt_dtypes([t.dtype])} differs from q.dtype={fmt_dtypes([q.dtype])} "
                f"(supported: one dtype of {supported_dt} for q, k, v): cast {name} to q.dtype"
            )

    # devices
    dev = q.device
    for name, t in named.items():
        if t.device != dev:
            reasons.append(
                f"{name}.device={t.device} differs from q.device={dev} (supported: all tensors on one "
                f"device): move {name} to {dev}"
            )
    if dev.type == "cpu":
        if not _INTERPRET:
            reasons.append(
                "device=cpu without TRITON_INTERPRET=1 (supported: cuda): move tensors to a GPU, set "
                "TRITON_INTERPRET=1 before importing the kernel, or use kernel='torch'"
            )
    elif dev.type == "cuda":
        if _INTERPRET:
            reasons.append(
                "device=cuda with TRITON_INTERPRET=1 (supported: cpu under the interpreter): move tensors "
                "to the CPU or unset TRITON_INTERPRET"
            )
        else:
            cc = torch.cuda.get_device_capability(dev)
            if cc < caps.min_compute_capability:
                need = ".".join(map(str, caps.min_compute_capability))
                reasons.append(
                    f"compute capability={cc[0]}.{cc[1]} (supported: >= {need}): use an Ampere or newer "
                    "GPU or kernel='torch'"
                )
    else:
        reasons.append(
            f"device={dev.type} (supported: {', '.join(caps.devices)}): move tensors to a GPU or use "
            "kernel='torch'"
        )

    # shapes
    if D not in caps.head_dims:
        reasons.append(
            f"head_dim={D} (supported: {fmt_ints(caps.head_dims)}): pad the head dim or use kernel='torch'"
        )
    if Dk != D:
        reasons.append(f"k head_dim={Dk} differs from q head_dim={D} (supported: equal): give k q's head dim")
    if tuple(v.shape) != tuple(k.shape):
        reasons.append(
            f"v.shape={tuple(v.shape)} differs from k.shape={tuple(k.shape)} (supported: equal, "
            "[B, Hkv, Nk, D]): give v the shape of k"
        )
    if Bk != B:
        reasons.append(f"k batch={Bk} differs from q batch={B} (supported: equal): give q and k the same batch")
    if Hkv == 0 or Hq % Hkv != 0:
        reasons.append(
            f"Hq % Hkv = {Hq} % {Hkv} != 0 (supported: Hq a multiple of Hkv): use a number of KV heads "
            "that divides the number of query heads"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() == 4 and t.shape[-1] > 1 and t.stride(-1) != 1:
            reasons.append(
                f"{name}.stride(-1)={t.stride(-1)} (supported: 1, contiguous head dim; other strides are "
                f"free): call {name}.contiguous() or copy it"
            )

    # block sizes
    for name, bs in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(bs, int) or isinstance(bs, bool) or bs not in caps.block_sizes:
            reasons.append(
                f"{name}={bs!r} (supported: {fmt_ints(caps.block_sizes)}): build the layout with a "
                "supported block size or use kernel='torch'"
            )

    # layout tensors
    n_qb = math.ceil(Nq / block_q) if isinstance(block_q, int) and block_q > 0 else None
    for name, t, rank in (("kv_counts", kv_counts, 3), ("kv_indices", kv_indices, 4)):
        if t.dtype != caps.index_dtype:
            reasons.append(
                f"{name}.dtype={fmt_dtypes([t.dtype])} (supported: int32): convert with "
                f"{name}.to(torch.int32)"
            )
        if t.dim() != rank:
            want = "[B, Hq, nQb]" if rank == 3 else "[B, Hq, nQb, max_k]"
            reasons.append(
                f"{name}.shape={tuple(t.shape)} (supported: {rank}-D {want}): build the layout for "
                f"B={B}, Hq={Hq}, nQb=ceil(Nq/block_q)"
            )
        elif n_qb is not None and tuple(t.shape[:3]) != (B, Hq, n_qb):
            reasons.append(
                f"{name}.shape={tuple(t.shape)} (supported: leading dims (B, Hq, nQb)=({B}, {Hq}, {n_qb}) "
                f"for Nq={Nq}, block_q={block_q}): rebuild the layout for these q/block sizes"
            )
    if kv_counts.dim() == 3 and kv_indices.dim() == 4 and tuple(kv_counts.shape) != tuple(kv_indices.shape[:3]):
        reasons.append(
            f"kv_counts.shape={tuple(kv_counts.shape)} differs from kv_indices.shape[:3]="
            f"{tuple(kv_indices.shape[:3])} (supported: equal): pass counts and indices of one layout"
        )

    # per-sequence lengths
    for name, t in (("q_lens", q_lens), ("k_lens", k_lens)):
        if t is None:
            continue
        if t.dtype not in caps.len_dtypes:
            reasons.append(
                f"{name}.dtype={fmt_dtypes([t.dtype])} (supported: {fmt_dtypes(caps.len_dtypes)}): "
                f"convert with {name}.to(torch.int32)"
            )
        if tuple(t.shape) != (B,):
            reasons.append(
                f"{name}.shape={tuple(t.shape)} (supported: ({B},), one length per sequence): pass one "
                "length per batch entry"
            )
    return reasons


def tma_config_reasons(cfg: KernelConfig, device: torch.device | None, *, interpret: bool | None = None,
                       capability: tuple[int, int] | None = None) -> list[str]:
    """Why ``cfg``'s TMA settings cannot run on ``device`` (empty: they can, or TMA is off).

    ``interpret`` / ``capability`` override the detected interpreter mode / compute capability (tests).
    """
    reasons = []
    if not isinstance(cfg.use_tma, bool):
        reasons.append(f"config.use_tma={cfg.use_tma!r} (supported: True, False): pass a bool")
        return reasons
    if cfg.tma_descriptor not in TMA_DESCRIPTORS:
        reasons.append(
            f"config.tma_descriptor={cfg.tma_descriptor!r} (supported: {', '.join(map(repr, TMA_DESCRIPTORS))}): "
            "pick one of those"
        )
        return reasons
    if not cfg.use_tma:
        return reasons
    interpret = _INTERPRET if interpret is None else interpret
    missing = _tma_api_missing(cfg.tma_descriptor)
    if missing:
        reasons.append(
            f"config.use_tma=True with tma_descriptor={cfg.tma_descriptor!r}: {missing} (supported: triton >= "
            "3.4): upgrade triton or set use_tma=False"
        )
    if interpret:
        return reasons  # the interpreter emulates descriptor loads (used by the tests)
    dev_type = device.type if device is not None else "cuda"
    if dev_type != "cuda":
        reasons.append(
            f"config.use_tma=True on device={dev_type} (supported: cuda with compute capability >= 9.0, or the "
            "Triton interpreter): set use_tma=False"
        )
        return reasons
    if capability is None and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(device)
    if capability is not None and tuple(capability) < TMA_MIN_COMPUTE_CAPABILITY:
        need = ".".join(map(str, TMA_MIN_COMPUTE_CAPABILITY))
        reasons.append(
            f"config.use_tma=True on compute capability={capability[0]}.{capability[1]} (supported: >= {need}, "
            "Hopper TMA): set use_tma=False"
        )
    return reasons


def _collapsible_2d(t: Tensor) -> bool:
    """True when [B, H, N, D] rows b, h, n sit at (b * H + h) * N * stride(2) (a 2-D view exists)."""
    B, H, N, _ = t.shape
    return (H == 1 or t.stride(1) == N * t.stride(2)) and (B == 1 or t.stride(0) == H * N * t.stride(2))


def tma_mode(cfg: KernelConfig, k: Tensor, v: Tensor) -> int:
    """Kernel K/V load path for ``cfg`` on these tensors: ``TMA_OFF``, ``TMA_DEVICE`` or ``TMA_HOST``.

    TMA needs 16-byte aligned base and leading strides and a contiguous head dim; the host-side
    descriptor also needs the 2-D view ``[B * Hkv * Nk, D]`` (collapsible strides) with fewer than
    2**31 rows. Otherwise (or with ``use_tma=False``) K/V use pointer loads.
    """
    if not cfg.use_tma:
        return TMA_OFF
    es = k.element_size()
    for t in (k, v):
        if t.data_ptr() % 16 or t.stride(-1) != 1 or (t.stride(2) * es) % 16:
            return TMA_OFF
    if cfg.tma_descriptor == "host":
        rows = k.shape[0] * k.shape[1] * k.shape[2]
        if rows < 2**31 and _collapsible_2d(k) and _collapsible_2d(v):
            return TMA_HOST
        return TMA_OFF
    for t in (k, v):
        if (t.shape[0] > 1 and (t.stride(0) * es) % 16) or (t.shape[1] > 1 and (t.stride(1) * es) % 16):
            return TMA_OFF
    return TMA_DEVICE


def _torch_scratch_alloc(size: int, alignment: int, stream):
    # descriptor scratch of device-side TMA (torch's caching allocator aligns to >= 512 bytes)
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_triton_allocator() -> None:
    """Give triton a global-scratch allocator unless the user already set one."""
    import triton

    try:
        from triton.runtime import _allocation

        current = _allocation._allocator.get()
        if not isinstance(current, _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # private layout changed: set ours
        pass
    triton.set_allocator(_torch_scratch_alloc)


def _resolve_config(config, head_dim, dtype, block_q, block_k, device=None) -> KernelConfig:
    cfg = default_config(head_dim, dtype, block_q, block_k)
    if config is None:
        return cfg
    keys = tuple(f.name for f in fields(KernelConfig))
    if isinstance(config, KernelConfig):
        cfg = config
    elif isinstance(config, Mapping):
        unknown = set(config) - set(keys)
        if unknown:
            raise ValueError(
                f"config keys {sorted(unknown)} (supported: {', '.join(keys)}): drop the unknown keys"
            )
        cfg = replace(cfg, **dict(config))
    else:
        raise ValueError(
            f"config={config!r} (supported: None, KernelConfig or a dict of {'/'.join(keys)}): pass one of those"
        )
    bad = []
    for name, tile, layout, lname in (("block_m", cfg.block_m, block_q, "block_q"),
                                      ("block_n", cfg.block_n, block_k, "block_k")):
        if tile < 16 or tile & (tile - 1) or layout % tile:
            bad.append(
                f"config.{name}={tile} (supported: a power of two >= 16 dividing {lname}={layout}): "
                f"pick a tile that divides {lname}"
            )
    if cfg.num_warps not in (1, 2, 4, 8, 16):
        bad.append(f"config.num_warps={cfg.num_warps} (supported: 1, 2, 4, 8, 16): pick one of those")
    if cfg.num_stages < 1:
        bad.append(f"config.num_stages={cfg.num_stages} (supported: >= 1): pick a positive number")
    if isinstance(cfg.m_chunk, bool) or not isinstance(cfg.m_chunk, int) or cfg.m_chunk < 0:
        bad.append(f"config.m_chunk={cfg.m_chunk!r} (supported: an int >= 0): pass 0 (all heads of a q-tile "
                   "together) or a chunk of q-tiles per head")
    bad += tma_config_reasons(cfg, device)
    if bad:
        raise ValueError("block_sparse_attention: unsupported config:\n  - " + "\n  - ".join(bad))
    return cfg


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_counts: Tensor,
    kv_indices: Tensor,
    *,
    block_q: int,
    block_k: int,
    causal: bool = True,
    q_lens: Tensor | None = None,
    k_lens: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    out: Tensor | None = None,
    config: KernelConfig | Mapping[str, Any] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Block-sparse attention forward with the Triton kernel (same contract as the naive twin).

    ``out``: optional preallocated output ``[B, Hq, Nq, D]`` of q's dtype and device (any strides with
    a contiguous last dim); every row of it is written (padded / empty rows with 0). Without it the output is
    allocated like q (``torch.empty_like``: q's strides when q is dense, e.g. a ``[B, Nq, Hq, D]`` memory seen
    as ``[B, Hq, Nq, D]``; contiguous otherwise).
    ``config``: optional tiling override (``KernelConfig`` or dict with any of ``block_m``, ``block_n``,
    ``num_warps``, ``num_stages``, ``use_tma``, ``tma_descriptor``, ``one_loop``, ``m_chunk``), for tuning, used
    as given;
    default: ``default_config``, then ``short_sequence_config`` (one loop with host TMA at ``Nk <= 32K`` on
    Hopper).
    Returns ``out`` or ``(out, lse)`` with ``lse`` float32 ``[B, Hq, Nq]``.
    """
    key = _call_key(q, k, v, kv_counts, kv_indices, q_lens, k_lens, out, block_q, block_k, causal, return_lse,
                    scale, config)
    prep = _PREPARED.get(key) if key is not None else None
    if prep is None:
        prep = _prepare(q, k, v, kv_counts, kv_indices, block_q=block_q, block_k=block_k, causal=causal,
                        q_lens=q_lens, k_lens=k_lens, scale=scale, return_lse=return_lse, out=out, config=config)
        if key is not None:
            _remember(_PREPARED, key, prep)

    if out is None:
        # in q's memory layout (as SDPA's flash backend does): for q a [B, Hq, Nq, D] view of [B, Nq, Hq, D] memory
        # (transformers' projections) the caller's transpose back to [B, Nq, Hq, D] is then free
        out = torch.empty_like(q, memory_format=torch.preserve_format)
    lse = torch.empty(prep.lse_shape, dtype=torch.float32, device=q.device) if return_lse else None
    if prep.kind == _EMPTY:
        return (out, lse) if return_lse else out
    if prep.kind == _NO_KEYS:  # no key anywhere: every row is empty
        out.zero_()
        if lse is not None:
            lse.fill_(float("-inf"))
        return (out, lse) if return_lse else out

    k_desc, v_desc = k, v  # unused pointers unless TMA_HOST
    if prep.tma == TMA_HOST:
        from triton.tools.tensor_descriptor import TensorDescriptor

        rows, d, bn = prep.desc_rows, q.shape[3], prep.cfg.block_n
        k_desc = TensorDescriptor(k.as_strided((rows, d), (k.stride(2), 1)), [rows, d], [k.stride(2), 1], [bn, d])
        v_desc = TensorDescriptor(v.as_strided((rows, d), (v.stride(2), 1)), [rows, d], [v.stride(2), 1], [bn, d])
    so = out.stride()
    args = (
        q, k, v, out, lse if lse is not None else out,  # LSE: unused pointer when RETURN_LSE is False
        kv_counts, kv_indices,
        q_lens if q_lens is not None else kv_counts,  # unused pointers when HAS_Q_LENS / HAS_K_LENS are False
        k_lens if k_lens is not None else kv_counts,
        k_desc, v_desc, prep.qk_scale, *prep.qkv_strides, so[0], so[1], so[2], *prep.tail_args,
    )
    _launch(prep, args, q.device)
    return (out, lse) if return_lse else out


# kinds of prepared calls: launch the kernel, nothing to write, no key anywhere (rows zeroed)
_LAUNCH, _EMPTY, _NO_KEYS = 0, 1, 2


@dataclass
class _Prepared:
    """What ``block_sparse_attention`` derives from a call's metadata alone (validated), reused by later calls with
    the same ``_call_key``."""

    kind: int
    lse_shape: tuple[int, int, int]
    cfg: KernelConfig | None = None
    tma: int = TMA_OFF
    desc_rows: int = 0
    qk_scale: float = 0.0
    qkv_strides: tuple[int, ...] = ()
    tail_args: tuple[int, ...] = ()  # layout and LSE strides, sizes
    grid: tuple[int, int, int] = (1, 1, 1)
    constexprs: dict[str, Any] | None = None
    launch: Launch | None = None  # created by the first launch (after any shared-memory fallback)
    last: dict[str, int] | None = None  # LAST_LAUNCH of this call


#: prepared calls by ``_call_key`` (oldest dropped beyond ``_PREPARED_MAX``)
_PREPARED: dict[tuple, _Prepared] = {}
#: ``not_supported_reasons`` answers per signature (see there)
_REASONS: dict[tuple, tuple[str, ...]] = {}
_PREPARED_MAX = 512


def _remember(cache: dict, key: tuple, value: Any) -> Any:
    """``cache[key] = value``, dropping the oldest entry first when the cache holds ``_PREPARED_MAX``; returns
    ``value``."""
    if len(cache) >= _PREPARED_MAX:
        cache.pop(next(iter(cache), None), None)  # the oldest entry
    cache[key] = value
    return value


def clear_call_cache() -> None:
    """Forget the prepared calls and the kept check results (tests that patch this module's checks call it)."""
    _PREPARED.clear()
    _REASONS.clear()


def _meta(t: Tensor | None) -> tuple | None:
    # everything of a tensor argument that validation, the config and Triton's specialisation read: shape,
    # strides, dtype, device and 16-byte alignment
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() & 15)


def _call_key(q, k, v, kv_counts, kv_indices, q_lens, k_lens, out, block_q, block_k, causal, return_lse, scale,
              config) -> tuple | None:
    """A key from which everything ``_prepare`` computes follows, or None (not cacheable: a dict config, an
    argument that is not a tensor, an unhashable value)."""
    if config is not None and not isinstance(config, KernelConfig):
        return None
    if scale is not None and type(scale) not in (float, int):  # e.g. a 0-d tensor: hashed by identity
        return None
    try:
        key = (_meta(q), _meta(k), _meta(v), _meta(kv_counts), _meta(kv_indices), _meta(q_lens), _meta(k_lens),
               _meta(out), block_q, block_k, bool(causal), bool(return_lse), scale, config, _IDX_CHUNK)
        hash(key)
    except (AttributeError, TypeError, RuntimeError):
        return None
    return key


def _prepare(q, k, v, kv_counts, kv_indices, *, block_q, block_k, causal, q_lens, k_lens, scale, return_lse, out,
             config) -> _Prepared:
    """Validate a call (raising one ``ValueError`` that lists every problem) and derive its launch."""
    reasons = not_supported_reasons(
        q, k, v, kv_counts, kv_indices, block_q=block_q, block_k=block_k, q_lens=q_lens, k_lens=k_lens
    )
    if scale is None:
        d = q.shape[-1] if isinstance(q, Tensor) and q.dim() > 0 else 1
        scale = 1.0 / math.sqrt(max(d, 1))
    scale = float(scale)
    if not math.isfinite(scale) or scale == 0.0:
        reasons.append(f"scale={scale} (supported: finite and non-zero): pass a finite non-zero scale")
    B, Hq, Nq, D = q.shape if isinstance(q, Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    if out is not None and not reasons:
        want = (B, Hq, Nq, D)
        if not isinstance(out, torch.Tensor):
            reasons.append(f"out is a {type(out).__name__} (supported: torch.Tensor or None): pass a tensor")
        else:
            if tuple(out.shape) != want:
                reasons.append(f"out.shape={tuple(out.shape)} (supported: {want}): allocate out like q")
            if out.dtype != q.dtype:
                reasons.append(
                    f"out.dtype={fmt_dtypes([out.dtype])} (supported: q.dtype={fmt_dtypes([q.dtype])}): "
                    "allocate out with q's dtype"
                )
            if out.device != q.device:
                reasons.append(f"out.device={out.device} (supported: q.device={q.device}): allocate out on q's device")
            if out.dim() == 4 and out.shape[-1] > 1 and out.stride(-1) != 1:
                reasons.append(
                    f"out.stride(-1)={out.stride(-1)} (supported: 1): pass a buffer with a contiguous last dim"
                )
    if reasons:
        raise ValueError(
            "block_sparse_attention: inputs not supported by the Triton kernel:\n  - " + "\n  - ".join(reasons)
        )
    cfg = _resolve_config(config, D, q.dtype, block_q, block_k, q.device)
    if config is None:
        cfg = short_sequence_config(cfg, D, k, v, q.device)

    Hkv, Nk = k.shape[1], k.shape[2]
    max_k = kv_indices.shape[-1]
    lse_shape = (B, Hq, Nq)
    if B * Hq * Nq * D == 0 and (not return_lse or B * Hq * Nq == 0):
        return _Prepared(_EMPTY, lse_shape)
    if Nk == 0 or max_k == 0:
        return _Prepared(_NO_KEYS, lse_shape)

    tma = tma_mode(cfg, k, v)
    if tma == TMA_DEVICE and not _INTERPRET:
        _ensure_triton_allocator()
    # host descriptors may read rows past k_len in masked tiles: zero those V rows when they can exist
    tma_zero_v = tma == TMA_HOST and (k_lens is not None or Nk % cfg.block_n != 0)
    stride_lb, stride_lh = (Hq * Nq, Nq) if return_lse else (0, 0)  # the LSE is allocated contiguous
    qkv_strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                   v.stride(0), v.stride(1), v.stride(2))
    tail_args = (
        kv_counts.stride(0), kv_counts.stride(1), kv_counts.stride(2),
        kv_indices.stride(0), kv_indices.stride(1), kv_indices.stride(2), kv_indices.stride(3),
        stride_lb, stride_lh,
        Hq, Hq // Hkv, Hkv, Nq, Nk, math.ceil(Nk / block_k), max_k,
    )
    constexprs = dict(
        HEAD_DIM=D,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_Q=block_q, BLOCK_K=block_k,
        CAUSAL=bool(causal), HAS_Q_LENS=q_lens is not None, HAS_K_LENS=k_lens is not None,
        RETURN_LSE=bool(return_lse), POS_SCALE=scale > 0, IEEE_DOT=q.dtype == torch.float32,
        UPCAST_DOT=_INTERPRET and q.dtype == torch.bfloat16,
        IDX_CHUNK=_IDX_CHUNK, TMA=tma, TMA_ZERO_V=tma_zero_v,
        ONE_LOOP=bool(cfg.one_loop), M_CHUNK=int(cfg.m_chunk),
    )
    return _Prepared(_LAUNCH, lse_shape, cfg=cfg, tma=tma, desc_rows=B * Hkv * Nk,
                     qk_scale=scale * 1.4426950408889634,  # log2(e) folded into the scale
                     qkv_strides=qkv_strides, tail_args=tail_args, grid=(B * Hq, math.ceil(Nq / cfg.block_m), 1),
                     constexprs=constexprs)


#: layout slots scanned per vector load when splitting a row into its mask-free / masked parts
_IDX_CHUNK = 64

#: what the latest launch actually used (num_stages after any shared-memory fallback, TMA mode), for
#: benchmarks
LAST_LAUNCH: dict[str, int] = {}

# (kwargs of one specialization) -> num_stages that fit in shared memory, learnt on OutOfResources
_STAGES_THAT_FIT: dict[tuple, int] = {}


def _launch(prep: _Prepared, args: tuple, device: torch.device) -> None:
    cfg, launch = prep.cfg, prep.launch
    with on_device(device):
        if launch is not None:
            launch(prep.grid, args)
        else:
            key = (device.type, device.index, cfg, tuple(sorted(prep.constexprs.items())))
            stages = _STAGES_THAT_FIT.get(key, cfg.num_stages)
            while True:
                launch = Launch(_kernel._block_sparse_attn_fwd, prep.constexprs, cfg.num_warps, stages,
                                device_index(device))
                try:
                    launch(prep.grid, args)
                    break
                except Exception as e:  # too many stages for this GPU's shared memory: use fewer
                    if type(e).__name__ != "OutOfResources" or stages <= 1:
                        raise
                    stages -= 1
                    _STAGES_THAT_FIT[key] = stages
            prep.launch = launch
            prep.last = dict(num_stages=stages, num_warps=cfg.num_warps, tma=prep.tma)
    LAST_LAUNCH.update(prep.last)
