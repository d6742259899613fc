"""Launcher of the Triton proxy-score kernel (contract: ``naive.py``'s docstring).

``proxy_scores`` validates its inputs with ``not_supported_reasons`` (one ``ValueError`` listing every
problem), forms the proxy keys with one torch reduction (the mean of each group's KV heads; skipped when
a group has a single KV head) and launches ``kernel._proxy_scores_fwd`` (``q_blocks_for`` q-blocks per program),
which averages the query heads itself while loading the sampled rows. Allocated: the output ``[B, G, nQb, nKb]``
float32, when ``Hkv > G`` the proxy keys ``[B, G, Nk, D]`` in the input dtype, and on the one-pass path
(``one_pass_for``) the tile row maxima of the tiles each program walks (``tmax_scratch_bytes``, packed: 64.1 MiB for
the Llama shape at 128K). With few programs and long rows (``split_blocks_for``) it launches the three split-K
kernels instead (``_launch_split``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import torch
from torch import Tensor

from .._checks import fmt_ints, interpreted, qk_reasons
from .._launch import device_index, launch, on_device
from .._triton_common import one_pass_for, pool_chunk_for, pow2_at_least
from . import kernel as _kernel


def _detect_interpreter() -> bool:
    return interpreted(_kernel._proxy_scores_fwd)


#: True when the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 at import).
_INTERPRET: bool = _detect_interpreter()


@dataclass(frozen=True)
class Capabilities:
    """What ``proxy_scores`` accepts, as data."""

    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...]
    devices: tuple[str, ...]
    block_sizes: tuple[int, ...]
    causal: bool
    non_causal: bool
    varlen: bool  # per-sequence lengths: no (call it per trimmed sequence)


CAPABILITIES = Capabilities(
    dtypes=(torch.bfloat16, torch.float16, torch.float32),
    head_dims=(16, 32, 64, 128, 256),
    devices=("cuda", "cpu") if _INTERPRET else ("cuda",),
    block_sizes=(16, 32, 64, 128, 256, 512),
    causal=True,
    non_causal=True,
    varlen=False,
)


@dataclass(frozen=True)
class KernelConfig:
    """Kernel tiling: ``block_n`` keys per tile (a power of two >= 16 dividing ``block_k``); ``split_blocks``
    kv-blocks per split (``None``: chosen from the shape, see ``split_blocks_for``; ``0``: no split, one
    program walks all kv-blocks of its q-blocks); ``q_blocks`` q-blocks per program on the unsplit path
    (``None``: ``q_blocks_for``); ``one_pass``: score each tile once and keep its row maxima in a float32 scratch
    for the pooling, instead of a second walk over the keys (``None``: ``one_pass_for``, i.e. when the scratch
    fits in ``ONE_PASS_MAX_SCRATCH_MB``); ``pool_chunk``: kv-blocks that pooling handles per step (``None``:
    ``pool_chunk_for``); ``across_groups``: on the unsplit path, start the heaviest programs of every (batch, group)
    first instead of all programs of one (batch, group) after another (``None``: ``across_groups_for``)."""

    block_n: int
    num_warps: int
    num_stages: int
    split_blocks: int | None = None
    q_blocks: int | None = None  # q-blocks per program without a split (None: q_blocks_for; 1, 2 or 4)
    one_pass: bool | None = None  # walk the keys once, tile row maxima in a scratch (None: one_pass_for)
    pool_chunk: int | None = None  # one-pass pooling: kv-blocks per step, a power of two (None: pool_chunk_for)
    across_groups: bool | None = None  # unsplit path: heaviest programs of every (batch, group) first (None: rule)


def split_blocks_for(n_kb: int, programs: int) -> int:
    """kv-blocks per split for ``programs`` = B x G x nQb q-block programs: 32 when there are few programs and
    long rows (>= 128 kv-blocks, <= 512 programs), else 0 (no split).

    Measured on an H100 (bf16, D 128, stride 4; ``benchmarks/bench_proxy_split.py``,
    ``proxy_split_h100_2026-11-28.json``): Llama shape (G=1) at 32K, 256 programs: 0.602 ms without a split,
    0.444 ms with splits of 32 (the last q-block's 256 kv-blocks walked twice by one program were the critical
    path); with >= 1,024 programs (Llama 128K, Qwen G=4 at 32K and 128K) the kernel is throughput-bound and
    splitting gains nothing (5.08 vs 5.00 ms, 1.28 vs 1.26, 19.8 vs 21.0); at 8K (<= 256 programs, 64 kv-blocks)
    the extra launches cost more than they save (0.150 vs 0.157-0.209 ms).
    """
    return 32 if n_kb >= 128 and programs <= 512 else 0


def q_blocks_for(programs: int, block_s: int) -> int:
    """q-blocks per program on the unsplit path: 2 when there are >= 256 programs (so halving them keeps the GPU
    busy) and the row tile stays <= 128 rows, else 1.

    Measured on an H100 (``proxy_qblocks_h100_2026-11-28.json``): 2 q-blocks per program load each kv-tile once
    for both, and the throughput-bound cases speed up: Llama shape 128K 5.06 -> 2.82 ms, Qwen shape (G=4) 128K
    19.6 -> 10.8 ms, 32K 1.29 -> 1.00 ms, 8K 0.176 -> 0.139 ms; 4 q-blocks per program were slower than 2
    everywhere (3.61, 13.9, 1.35 ms), and with 64 programs (Llama 8K) 2 were slower than 1 (0.168 vs 0.151 ms).
    """
    return 2 if programs >= 256 and 2 * block_s <= 128 else 1


#: L2 size assumed off CUDA (the interpreter), so that ``across_groups_for`` answers there as on an H100 / H200
CPU_L2_BYTES = 50 << 20


def across_groups_for(batch_groups: int, n_k: int, head_dim: int, itemsize: int, device: torch.device) -> bool:
    """Program order of the unsplit path: the heaviest programs of every (batch, group) first when there are
    several and all their proxy keys fit in the device's L2 cache together; else all programs of one (batch, group),
    heaviest first, then the next (which keeps one group's keys hot in L2).

    Why: programs start in grid order and each needs about ``its q-blocks' horizon / BLOCK_N`` kv-tiles. One
    group after another, the last group's longest programs (as long as a program slot's average load when the
    grid spans about two waves) start only once the first groups are done. A list-scheduling simulation of the
    Qwen2.5-7B shape (G=4, 512 programs of 2 .. 256 tiles, 264 slots: 132 SMs, two programs each) gives a
    makespan of 1.48x the ideal one group after another and 1.00x across groups; at 128K both are 1.01x. The
    measured Qwen estimate at 32K costs 1.5x as much per tile as at 128K (H200, ``proxy_kernel_time_h200_
    2026-12-03.json``), which this explains. The order itself is not timed yet: ``bench_proxy_split.py --splits
    auto auto+across auto+grouped``. The L2 condition keeps the order of long sequences, whose keys do not fit."""
    if batch_groups <= 1:
        return False
    l2 = _l2_bytes(device_index(device)) if device.type == "cuda" else CPU_L2_BYTES
    return batch_groups * n_k * head_dim * itemsize <= l2


@functools.lru_cache(maxsize=None)
def _l2_bytes(index: int) -> int:
    return int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", CPU_L2_BYTES))


def _floor_sum(n: int, m: int, a: int, b: int) -> int:
    """``sum(floor((a * i + b) / m) for i in range(n))`` for ``n, a, b >= 0``, ``m >= 1``, in O(log) steps
    (the Euclid-like reduction of AtCoder Library's ``floor_sum``)."""
    total = 0
    while True:
        if a >= m:
            total += n * (n - 1) // 2 * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        y_max = a * n + b
        if y_max < m:
            return total
        n, b = divmod(y_max, m)
        m, a = a, m


def tmax_tiles(n_q: int, n_k: int, block_q: int, block_n: int, q_blocks: int, causal: bool) -> int:
    """kv-tiles the packed one-pass scratch keeps per (batch, group): the sum over the programs ``p`` (``q_blocks``
    = R q-blocks each; the split path: R = 1) of ``ceil(key_end(p) / block_n)``, the tiles ``p`` walks
    (``kernel._program_tiles``: ``key_end`` of its last q-block, bottom-right causal; all ``n_k`` keys without
    causal or for the last program). Closed form: programs ``p < P - 1`` see ``max((p + 1) * R * block_q + n_k -
    n_q, 0)`` keys (a floor sum), the last one all of them."""
    n_qb = -(-n_q // block_q)
    P = -(-n_qb // q_blocks)
    all_tiles = -(-n_k // block_n)
    if not causal:
        return P * all_tiles
    span, d = q_blocks * block_q, n_k - n_q
    p0 = min(max(0, -d // span), P - 1)  # programs before p0 see no key (only when n_q > n_k)
    n = P - 1 - p0  # programs p0 .. P-2: ceil(((p + 1) * span + d) / block_n), all terms > 0
    tiles = _floor_sum(n, block_n, span, (p0 + 1) * span + d + block_n - 1) if n else 0
    return tiles + all_tiles


def tmax_scratch_bytes(batch_groups: int, n_q: int, n_k: int, block_q: int, block_n: int, block_s: int,
                       q_blocks: int, causal: bool) -> int:
    """Bytes of the one-pass scratch: a float32 row max per sampled row (``q_blocks * block_s`` per program; the
    split path: ``q_blocks`` = 1) and per kv-tile each program walks, packed (``tmax_tiles`` per (batch, group);
    about half of a ``[programs, nKb * block_k / block_n]`` rectangle under causal, all of it without).
    Stride 4, 128-token blocks, two q-blocks per program (64 rows; ``block_n`` = 128): Llama-3.1-8B shape (G=1)
    64.1 MiB at 128K, 256.3 MiB at 256K, 1024.5 MiB at 512K, 4097 MiB at 1M; Qwen2.5-7B shape (G=4) 256.5 MiB
    at 128K, 1025 MiB at 256K. Under ``one_pass_for``'s 1536 MiB the Llama shape walks once up to 512K and the
    Qwen shape up to 256K; 1M (4 GiB) walks twice."""
    return _packed_bytes(batch_groups, tmax_tiles(n_q, n_k, block_q, block_n, q_blocks, causal), q_blocks * block_s)


def _packed_bytes(batch_groups: int, tiles: int, rows: int) -> int:
    # the packed scratch of ``tiles`` kv-tiles per (batch, group), one float32 per sampled row of each
    return 4 * batch_groups * tiles * rows


def default_config(head_dim: int, dtype: torch.dtype, block_k: int, n_sampled: int) -> KernelConfig:
    """Tile by head dim and dtype, clamped to the layout block; more warps for tall (stride 1-2) row tiles."""
    if dtype == torch.float32:
        bn, warps, stages = 32, 4, 2
    elif head_dim > 128:
        bn, warps, stages = 64, 4, 2
    else:
        bn, warps, stages = 128, 4, 3
    if n_sampled > 64:
        warps = 8
    return KernelConfig(min(bn, block_k), warps, stages)


def not_supported_reasons(q: Tensor, k: Tensor, *, groups: int = 1, stride: int = 4, block_q: int = 128,
                          block_k: int = 128) -> list[str]:
    """Every reason the Triton kernel cannot score these inputs (empty list: supported).

    Each reason names the field, its value, the supported values and a fix.
    """
    caps = CAPABILITIES
    reasons = qk_reasons(q, k, dtypes=caps.dtypes, devices=caps.devices, head_dims=caps.head_dims,
                         interpret=_INTERPRET)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k)):
        return reasons  # shapes cannot be read
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or (Hkv >= 1 and Hkv % groups):
        divisors = [d for d in range(1, max(Hkv, 1) + 1) if Hkv % d == 0]
        reasons.append(f"groups={groups!r} (supported: a divisor of Hkv={Hkv}: {fmt_ints(divisors)}): pick one "
                       "of those")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        reasons.append(f"stride={stride!r} (supported: an integer >= 1): pass stride=4")
    for name, bs in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(bs, bool) or not isinstance(bs, int) or bs not in caps.block_sizes:
            reasons.append(f"{name}={bs!r} (supported: {fmt_ints(caps.block_sizes)}): use a supported block "
                           "size or impl='torch'")
    if Nq < 1 or Nk < 1:
        reasons.append(f"Nq={Nq}, Nk={Nk} (supported: >= 1 each): drop empty sequences")
    if isinstance(stride, int) and isinstance(block_q, int) and stride >= 1 and block_q >= 1:
        n_sampled = math.ceil(block_q / stride)
        if n_sampled > 256:
            reasons.append(f"ceil(block_q / stride)={n_sampled} sampled rows per q-block (supported: <= 256): "
                           "raise stride or lower block_q")
    return reasons


def _resolve_config(config, head_dim, dtype, block_k, n_sampled) -> KernelConfig:
    cfg = default_config(head_dim, dtype, block_k, n_sampled)
    if config is None:
        return cfg
    keys = tuple(f.name for f in fields(KernelConfig))
    if isinstance(config, KernelConfig):
        cfg = config
    elif isinstance(config, Mapping):
        unknown = set(config) - set(keys)
        if unknown:
            raise ValueError(f"config keys {sorted(unknown)} (supported: {', '.join(keys)}): drop the unknown keys")
        cfg = replace(cfg, **dict(config))
    else:
        raise ValueError(f"config={config!r} (supported: None, KernelConfig or a dict of {'/'.join(keys)}): "
                         "pass one of those")
    bad = []
    if cfg.block_n < 16 or cfg.block_n & (cfg.block_n - 1) or block_k % cfg.block_n:
        bad.append(f"config.block_n={cfg.block_n} (supported: a power of two >= 16 dividing block_k={block_k}): "
                   "pick a tile that divides block_k")
    if cfg.num_warps not in (1, 2, 4, 8, 16):
        bad.append(f"config.num_warps={cfg.num_warps} (supported: 1, 2, 4, 8, 16): pick one of those")
    if cfg.num_stages < 1:
        bad.append(f"config.num_stages={cfg.num_stages} (supported: >= 1): pick a positive number")
    if cfg.split_blocks is not None and (isinstance(cfg.split_blocks, bool) or not isinstance(cfg.split_blocks, int)
                                         or cfg.split_blocks < 0):
        bad.append(f"config.split_blocks={cfg.split_blocks!r} (supported: None for automatic, 0 for no split, or a "
                   "positive number of kv-blocks per split): pick one of those")
    if cfg.q_blocks not in (None, 1, 2, 4):
        bad.append(f"config.q_blocks={cfg.q_blocks!r} (supported: None for automatic, 1, 2, 4): pick one of those")
    if cfg.one_pass is not None and not isinstance(cfg.one_pass, bool):
        bad.append(f"config.one_pass={cfg.one_pass!r} (supported: None for automatic, True, False): pick one of "
                   "those")
    if cfg.across_groups is not None and not isinstance(cfg.across_groups, bool):
        bad.append(f"config.across_groups={cfg.across_groups!r} (supported: None for automatic, True, False): pick "
                   "one of those")
    if cfg.pool_chunk is not None and (isinstance(cfg.pool_chunk, bool) or not isinstance(cfg.pool_chunk, int)
                                       or not 1 <= cfg.pool_chunk <= 256 or cfg.pool_chunk & (cfg.pool_chunk - 1)):
        bad.append(f"config.pool_chunk={cfg.pool_chunk!r} (supported: None for automatic, or a power of two in "
                   "1..256): pick one of those")
    if bad:
        raise ValueError("proxy_scores: unsupported config:\n  - " + "\n  - ".join(bad))
    return cfg


def proxy_keys(k: Tensor, groups: int) -> Tensor:
    """``[B, G, Nk, D]``: mean of each group's KV heads in k's dtype (fp32 accumulation); ``k`` itself
    (no copy) when every group has one KV head."""
    B, Hkv, Nk, D = k.shape
    if Hkv == groups:
        return k
    return k.unflatten(1, (groups, Hkv // groups)).mean(2)


def proxy_scores(
    q: Tensor,
    k: Tensor,
    *,
    groups: int = 1,
    stride: int = 4,
    block_q: int = 128,
    block_k: int = 128,
    causal: bool = True,
    scale: float | None = None,
    config: KernelConfig | Mapping[str, Any] | None = None,
    checked: bool = False,
) -> Tensor:
    """Proxy block scores with the Triton kernel (same contract as ``proxy_scores_naive``).

    ``config``: optional tiling override (``KernelConfig`` or a dict of ``block_n``, ``num_warps``,
    ``num_stages``, ``split_blocks``, ``q_blocks``, ``one_pass``, ``pool_chunk``, ``across_groups``) for tuning;
    default from ``default_config``.
    ``checked=True``: the caller already ran ``not_supported_reasons`` on these inputs and got no reason, so
    they are not checked twice (saves host time per call); ``scale`` is still checked.
    Returns float32 ``[B, groups, nQb, nKb]``.
    """
    reasons = [] if checked else not_supported_reasons(q, k, groups=groups, stride=stride, block_q=block_q,
                                                       block_k=block_k)
    if scale is None and not reasons:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if scale is not None:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0.0:
            reasons.append(f"scale={scale} (supported: finite and > 0): pass scale=None (1/sqrt(D))")
    if reasons:
        raise ValueError("proxy_scores: inputs not supported by the Triton kernel:\n  - " + "\n  - ".join(reasons))
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    n_sampled = math.ceil(block_q / stride)
    cfg = _resolve_config(config, D, q.dtype, block_k, n_sampled)
    n_qb, n_kb = math.ceil(Nq / block_q), math.ceil(Nk / block_k)

    kp = proxy_keys(k, groups)  # [B, G, Nk, D]
    out = torch.empty((B, groups, n_qb, n_kb), dtype=torch.float32, device=q.device)
    block_s = pow2_at_least(n_sampled)
    split = split_blocks_for(n_kb, B * groups * n_qb) if cfg.split_blocks is None else cfg.split_blocks
    if split:
        _launch_split(q, kp, out, scale, groups, stride, block_q, block_k, causal, cfg, split, n_sampled, block_s)
        return out
    R = q_blocks_for(B * groups * n_qb, block_s) if cfg.q_blocks is None else cfg.q_blocks
    across = (across_groups_for(B * groups, Nk, D, kp.element_size(), q.device) if cfg.across_groups is None
              else cfg.across_groups)
    grid = (B * groups, -(-n_qb // R)) if across else (-(-n_qb // R), B * groups)
    tiles = tmax_tiles(Nq, Nk, block_q, cfg.block_n, R, causal)
    tmax = _tmax_scratch(cfg, _packed_bytes(B * groups, tiles, R * block_s), q.device)
    with on_device(q.device):
        launch(_kernel._proxy_scores_fwd, grid, (
            q, kp, out, tmax if tmax is not None else out,  # unused pointer without ONE_PASS
            scale * 1.4426950408889634,  # log2(e) folded into the scale
            q.stride(0), q.stride(1), q.stride(2), q.stride(3),
            kp.stride(0), kp.stride(1), kp.stride(2), kp.stride(3),
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            groups, Nq, Nk, n_kb, Hq // groups, n_qb, tiles,
        ), dict(
            STRIDE=stride, N_SAMPLED=n_sampled, BLOCK_S=block_s,
            HEAD_DIM=D, BLOCK_N=cfg.block_n, BLOCK_Q=block_q, BLOCK_K=block_k, R=R,
            CAUSAL=bool(causal), IEEE_DOT=q.dtype == torch.float32,
            UPCAST_DOT=_INTERPRET and q.dtype == torch.bfloat16, FILL_CHUNK=64,  # also rounds like the GPU
            ONE_PASS=tmax is not None, POOL_CHUNK=cfg.pool_chunk or pool_chunk_for(R * block_s),
            ACROSS_GROUPS=bool(across),
        ), num_warps=cfg.num_warps, num_stages=cfg.num_stages, device=q.device)
    return out


def _tmax_scratch(cfg: KernelConfig, nbytes: int, device: torch.device) -> Tensor | None:
    """The packed one-pass scratch of ``nbytes`` (``tmax_scratch_bytes``), float32, uninitialised (each program
    writes the tiles it reads), or None for two passes (``cfg.one_pass``, else ``one_pass_for``)."""
    if not one_pass_for(nbytes, cfg.one_pass):
        return None
    return torch.empty(nbytes // 4, dtype=torch.float32, device=device)


def _launch_split(q: Tensor, kp: Tensor, out: Tensor, scale: float, groups: int, stride: int, block_q: int,
                  block_k: int, causal: bool, cfg: KernelConfig, split: int, n_sampled: int, block_s: int) -> None:
    """The split-K path (``kernel._proxy_query``, ``_proxy_stats_split``, ``_proxy_pool_split``). Extra memory:
    the proxy queries ``[B * G, nQb, BLOCK_S, D]`` in the input dtype and two float32 ``[B * G, nQb, n_split,
    BLOCK_S]`` buffers of per-split row statistics: under the automatic rule (<= 512 programs, splits of 32
    blocks; Llama shape, stride 4) at most 4 MiB and 2 x 1 MiB (64K); 2 MiB and 2 x 256 KiB at 32K. One pass
    adds the tile row maxima, packed as on the unsplit path with one q-block per program (``tmax_scratch_bytes``
    with ``q_blocks`` = 1; the tiles each q-block walks, ``BLOCK_S`` float32 each): 4.02 MiB at 32K, 16.03 MiB
    at 64K (Llama shape)."""
    B, Hq, Nq, D = q.shape
    Nk = kp.shape[2]
    BG = B * groups
    n_qb, n_kb = out.shape[2], out.shape[3]
    n_split = -(-n_kb // split)
    qp = torch.empty((BG, n_qb, block_s, D), dtype=kp.dtype, device=q.device)
    m_part = torch.empty((BG, n_qb, n_split, block_s), dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    tiles = tmax_tiles(Nq, Nk, block_q, cfg.block_n, 1, causal)  # packed as on the unsplit path, R = 1
    tmax = _tmax_scratch(cfg, _packed_bytes(BG, tiles, block_s), q.device)
    one_pass = tmax is not None
    tmax_arg = tmax if one_pass else m_part  # unused pointer without ONE_PASS
    common = dict(STRIDE=stride, N_SAMPLED=n_sampled, BLOCK_S=block_s, HEAD_DIM=D, BLOCK_Q=block_q)
    dots = dict(BLOCK_N=cfg.block_n, BLOCK_K=block_k, CAUSAL=bool(causal), IEEE_DOT=q.dtype == torch.float32,
                UPCAST_DOT=_INTERPRET and q.dtype == torch.bfloat16)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, device=q.device)
    qk_scale = scale * 1.4426950408889634  # log2(e) folded into the scale
    with on_device(q.device):
        launch(_kernel._proxy_query, (n_qb, BG),
               (q, qp, q.stride(0), q.stride(1), q.stride(2), q.stride(3), groups, Nq, Hq // groups, n_qb),
               dict(UPCAST_DOT=_INTERPRET and q.dtype == torch.bfloat16, **common), num_warps=4, device=q.device)
        grid = (n_qb, BG, n_split)
        launch(_kernel._proxy_stats_split, grid,
               (qp, kp, m_part, l_part, tmax_arg, qk_scale, kp.stride(0), kp.stride(1), kp.stride(2), kp.stride(3),
                groups, Nq, Nk, n_kb, n_qb, n_split, split, tiles),
               dict(**common, **dots, ONE_PASS=one_pass), **opts)
        launch(_kernel._proxy_pool_split, grid,
               (qp, kp, m_part, l_part, tmax_arg, out, qk_scale,
                kp.stride(0), kp.stride(1), kp.stride(2), kp.stride(3),
                out.stride(0), out.stride(1), out.stride(2), out.stride(3),
                groups, Nq, Nk, n_kb, n_qb, n_split, split, tiles),
               dict(**common, **dots, FILL_CHUNK=64, ONE_PASS=one_pass,
                    POOL_CHUNK=cfg.pool_chunk or min(pool_chunk_for(block_s), pow2_at_least(split))), **opts)
