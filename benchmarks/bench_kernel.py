"""Benchmark of the Triton block-sparse attention forward on one GPU (meant for an H100).

bf16, B=1, Hq=32, Hkv=8, D=128, layout block 128, causal prefill of N tokens. For each N:

* dense causal baselines: torch SDPA with the cuDNN backend and the flash backend, FlexAttention
  (torch.compile) with a causal block mask;
* for each density (fraction of the causal blocks kept: sink block + local window + scattered random
  blocks, the same count per row for every head but different random blocks per head):
  the Triton kernel and FlexAttention on the identical layout (``BlockMask.from_kv_blocks``: blocks
  strictly below the diagonal as full blocks, the diagonal block as a partial block with a causal
  ``mask_mod``);
* a correctness check of the Triton output against FlexAttention on one layout per N.

At ``N <= GRAPH_MAX_N`` (32K) the Triton and Flex rows also record ``graph_ms``, the median of CUDA-graph
replays of one call (GPU time without any host work), and ``host_us``, the host time per call queued without
synchronising: there the kernels take a fraction of a millisecond, and ``do_bench`` (which flushes L2 before
each call) reports the host's launch time instead when the host is slower than the GPU.

Effective TFLOP/s count only the computed (kept, causally visible) query-key pairs:
``4 * pairs * D`` summed over heads (dense causal: ``4 * N^2 / 2 * D * Hq``).

Usage::

    python benchmarks/bench_kernel.py --n 8k 32k 128k --out benchmarks/results/h100.json
    python benchmarks/bench_kernel.py --n 32k --sweep   # also try a few kernel tilings at density 1.0
    python benchmarks/bench_kernel.py --n 8k 32k --densities 1.0 0.05 --variants   # kernel variants

``--variants`` times every config of ``VARIANTS`` (TMA on/off, pipeline depth, tiles) at each N and
each ``--variant-densities`` (default 1.0 and 0.05) on the same layouts as the main loop (so
``x flex`` compares with FlexAttention on the identical layout when that density is also in
``--densities``). Each row records the launched ``num_stages`` (after any shared-memory fallback),
the K/V load path (``tma``: 0 pointers, 1 device descriptors, 2 host descriptors) and the max
abs difference of the output against the default config. A variant that fails to compile or run is
recorded with its error and the run goes on.

Pipeline depth note: the K/V loads depend on an index load in the same iteration, and Triton's
pipeliner splits ``num_stages - 1`` between the two loads, so K/V get ``(num_stages - 1) // 2 + 1``
buffers: num_stages 3 and 4 compile to the same double-buffered kernel, 5 triple-buffers (128x128
tiles: ~229 KB of shared memory, under the H100's 227 KiB limit).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import traceback

import torch
import torch.nn.functional as F
import triton
import triton.testing

from sparsekit.kernels.block_sparse import block_sparse_attention  # noqa: E402
from sparsekit.kernels.block_sparse import op as bs_op  # noqa: E402
from sparsekit.kernels.block_sparse.op import KernelConfig, default_config  # noqa: E402
from _common import device_meta, graph_ms, host_us, parse_n  # noqa: E402  (benchmarks/_common.py)

B, HQ, HKV, D, BLOCK = 1, 32, 8, 128, 128
DTYPE = torch.bfloat16
SWEEP_CONFIGS = [
    KernelConfig(128, 128, 8, 3),
    KernelConfig(128, 64, 8, 3),
    KernelConfig(128, 128, 8, 4),
    KernelConfig(128, 64, 8, 4),
    KernelConfig(128, 64, 4, 3),
    KernelConfig(128, 128, 8, 2),
    KernelConfig(64, 64, 4, 3),
    KernelConfig(64, 128, 4, 3),
]


# (name, config) timed by --variants; None = the default config (the reference of max_abs_diff)
VARIANTS = [
    ("default", None),  # default_config, then short_sequence_config (one loop + host TMA at Nk <= 32K)
    ("two_loops_128x128_w8_s5", KernelConfig(128, 128, 8, 5)),
    ("two_loops_128x128_w8_s5_tma", KernelConfig(128, 128, 8, 5, use_tma=True)),
    ("one_loop_128x128_w8_s3_tma", KernelConfig(128, 128, 8, 3, use_tma=True, one_loop=True)),
    ("one_loop_128x128_w8_s3", KernelConfig(128, 128, 8, 3, one_loop=True)),
    ("one_loop_128x128_w8_s3_tmadev", KernelConfig(128, 128, 8, 3, use_tma=True, tma_descriptor="device",
                                                   one_loop=True)),
    # smaller shared-memory footprints (two programs per SM) for sparse layouts, where each program's fixed cost
    # (q load, index loads, pipeline fill, epilogue) is a larger share
    ("two_loops_128x64_w8_s2", KernelConfig(128, 64, 8, 2)),
    ("two_loops_64x64_w4_s3", KernelConfig(64, 64, 4, 3)),
    ("two_loops_64x128_w4_s2", KernelConfig(64, 128, 4, 2)),
    ("two_loops_128x128_w8_s3", KernelConfig(128, 128, 8, 3)),
]


# --------------------------------------------------------------------------------------------------
# layouts


#: --share: which heads draw the same scattered blocks (per q-block)
SHARES = ("head", "group", "all")

#: lengths up to which the Triton / Flex rows also record CUDA-graph replay times and the host time per call
GRAPH_MAX_N = 32768


def make_layout(n: int, density: float, *, seed: int, device,
                share: str = "head") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Causal block layout keeping ~``density`` of the causal blocks of every head.

    Row ``i`` keeps ``k_i = clamp(round(density * (i + 1)), 2, i + 1)`` blocks: the sink block 0, the
    diagonal block ``i``, a local window of the ``ceil(k_i / 4)`` latest blocks, and random blocks of
    the rest: different per head (``share="head"``, the default), shared by the query heads of one KV group
    (``"group"``: what one proxy score group per KV head gives at equal budgets), or by all heads (``"all"``:
    one score group, ProxyAttn's Llama default). Returns (kv_counts [1,Hq,nQb], kv_indices [1,Hq,nQb,max_k],
    pairs) with ``pairs`` the causally visible query-key pairs of one head.
    """
    if share not in SHARES:
        raise ValueError(f"share={share!r} (supported: {', '.join(SHARES)})")
    draw = {"head": HQ, "group": HKV, "all": 1}[share]
    nqb = math.ceil(n / BLOCK)
    g = torch.Generator(device=device).manual_seed(seed)
    ks = [min(i + 1, max(min(i + 1, 2), round(density * (i + 1)))) for i in range(nqb)]
    max_k = max(ks)
    counts = torch.tensor(ks, dtype=torch.int32, device=device).view(1, 1, nqb).expand(B, HQ, nqb).contiguous()
    idx = torch.zeros(B, HQ, nqb, max_k, dtype=torch.int32, device=device)
    for i, k_i in enumerate(ks):
        score = torch.rand(draw, i + 1, generator=g, device=device).repeat_interleave(HQ // draw, 0)
        window = max(1, math.ceil(k_i / 4))
        score[:, max(0, i + 1 - window):] = 3.0  # local window incl. the diagonal
        score[:, 0] = 2.0  # sink
        sel = torch.topk(score, k_i, dim=1).indices.sort(dim=1).values
        idx[0, :, i, :k_i] = sel.to(torch.int32)
    pairs = 0
    for i, k_i in enumerate(ks):  # full blocks + causal half of the diagonal block (N % BLOCK == 0)
        pairs += (k_i - 1) * BLOCK * BLOCK + BLOCK * (BLOCK + 1) // 2
    return counts, idx, pairs


def flex_block_mask(counts, idx, n, causal_mod):
    """BlockMask of the identical layout: blocks below the diagonal full, diagonal partial."""
    from torch.nn.attention.flex_attention import BlockMask

    nqb = counts.shape[-1]
    nkb = math.ceil(n / BLOCK)
    dev = counts.device
    full_idx = torch.zeros(B, HQ, nqb, nkb, dtype=torch.int32, device=dev)
    # every row ends with its diagonal block (ascending, diagonal always kept): the first count-1 are full
    full_idx[..., : idx.shape[-1] - 1] = idx[..., :-1]
    full_cnt = (counts - 1).to(torch.int32)
    slot = torch.arange(nkb, device=dev)
    full_idx = torch.where(slot < full_cnt[..., None], full_idx, torch.zeros((), dtype=torch.int32, device=dev))
    part_cnt = torch.ones_like(counts)
    part_idx = torch.zeros(B, HQ, nqb, nkb, dtype=torch.int32, device=dev)
    part_idx[..., 0] = torch.arange(nqb, dtype=torch.int32, device=dev)
    kw = dict(BLOCK_SIZE=BLOCK, mask_mod=causal_mod, seq_lengths=(n, n))
    try:
        return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, compute_q_blocks=False, **kw)
    except TypeError:
        return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, **kw)


# --------------------------------------------------------------------------------------------------
# timing


def bench_ms(fn, rep_ms: float) -> float:
    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=max(25, rep_ms // 4), rep=rep_ms, return_mode="median"))


def tflops(flops: float, ms: float | None) -> float | None:
    return None if ms is None else flops / (ms * 1e-3) / 1e12


def _err(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' | '.join(lines)[:400]}"


def run_n(n: int, densities: list[float], args, rows: list[dict]) -> None:
    dev = torch.device("cuda")
    torch.manual_seed(args.seed)
    q = torch.randn(B, HQ, n, D, device=dev, dtype=DTYPE)
    k = torch.randn(B, HKV, n, D, device=dev, dtype=DTYPE)
    v = torch.randn(B, HKV, n, D, device=dev, dtype=DTYPE)
    out = torch.empty_like(q)
    dense_flops = 4.0 * n * n / 2 * D * HQ
    rep = args.rep_ms if args.rep_ms else (100 if n <= 8192 else 500 if n <= 32768 else 3000)
    cfg = KernelConfig(*args.config) if args.config else None
    used_cfg = cfg or default_config(D, DTYPE, BLOCK, BLOCK)

    def row(impl, density, ms, flops, **extra):
        r = dict(n=n, impl=impl, density=density, ms=ms, tflops=tflops(flops, ms), **extra)
        rows.append(r)
        shown = f"{ms:9.3f} ms {r['tflops']:7.1f} TFLOP/s" if ms is not None else f"failed: {extra.get('error')}"
        print(f"  N={n:>6} {impl:<26} density={density:<6.3f} {shown}", flush=True)
        return r

    # dense causal baselines
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(backend):
        def fn_gqa():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        try:
            return bench_ms(fn_gqa, rep), "enable_gqa"
        except Exception:  # backend without GQA: expand K/V outside the timed region
            ke = k.repeat_interleave(HQ // HKV, 1)
            ve = v.repeat_interleave(HQ // HKV, 1)

            def fn():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

            ms = bench_ms(fn, rep)
            del ke, ve
            return ms, "kv expanded (backend rejected enable_gqa)"

    base = {}
    for name, backend in (("sdpa_cudnn_dense_causal", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_flash_dense_causal", SDPBackend.FLASH_ATTENTION)):
        if args.no_sdpa:
            break
        try:
            ms, note = sdpa(backend)
            base[name] = row(name, 1.0, ms, dense_flops, note=note)["ms"]
        except Exception as e:
            row(name, 1.0, None, dense_flops, error=_err(e))
        torch.cuda.empty_cache()
    cudnn_ms = base.get("sdpa_cudnn_dense_causal")

    flex = None
    causal_mod = None
    if not args.no_flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def causal_mod(b, h, q_idx, kv_idx):
                return q_idx >= kv_idx

            flex = torch.compile(flex_attention, dynamic=False)
            bm = create_block_mask(causal_mod, None, None, n, n, device=dev, BLOCK_SIZE=BLOCK)
            ms = bench_ms(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True), rep)
            base["flex_dense_causal"] = row("flex_dense_causal", 1.0, ms, dense_flops)["ms"]
            del bm
        except Exception as e:
            row("flex_dense_causal", 1.0, None, dense_flops, error=_err(e))
            if args.verbose:
                traceback.print_exc()
        torch.cuda.empty_cache()

    # block-sparse: triton + flex on the same layout
    dens = sorted(set(densities) | {1.0}, reverse=True)
    check_density = min((d for d in dens if d < 1.0), default=1.0, key=lambda d: abs(d - 0.2))
    own_full_ms = None
    flex_same_layout_ms: dict[float, float] = {}
    for d in dens:
        counts, idx, pairs = make_layout(n, d, seed=args.seed + int(d * 1000), device=dev, share=args.share)
        actual = pairs / (n * (n + 1) / 2)  # fraction of the causal pairs computed
        flops = 4.0 * pairs * D * HQ

        def run_triton(c=cfg):
            return block_sparse_attention(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK, causal=True,
                                          out=out, config=c)

        t_ms = None
        try:
            t_ms = bench_ms(run_triton, rep)
        except Exception as e:
            row("triton_block_sparse", d, None, flops, error=_err(e), actual_density=actual)
            if args.verbose:
                traceback.print_exc()
        if d == 1.0:
            own_full_ms = t_ms

        f_ms, f_err, bm = None, None, None

        def run_flex():
            return flex(q, k, v, block_mask=bm, enable_gqa=True)

        if flex is not None:
            try:
                bm = flex_block_mask(counts, idx, n, causal_mod)
                f_ms = bench_ms(run_flex, rep)
            except Exception as e:
                f_err = _err(e)
                if args.verbose:
                    traceback.print_exc()

        timing = {}
        if n <= GRAPH_MAX_N:
            if t_ms is not None:
                timing["triton"] = dict(graph_ms=graph_ms(run_triton), host_us=host_us(run_triton))
            if f_ms is not None:
                timing["flex"] = dict(graph_ms=graph_ms(run_flex), host_us=host_us(run_flex))
        if t_ms is not None:
            extra = dict(actual_density=actual, config=used_cfg.__dict__, **timing.get("triton", {}))
            if cudnn_ms:
                extra["speedup_vs_cudnn"] = cudnn_ms / t_ms
            if f_ms:
                extra["speedup_vs_flex_same_layout"] = f_ms / t_ms
            if own_full_ms:
                extra["ratio_vs_density_x_own_full"] = t_ms / (d * own_full_ms)
                extra["within_target"] = t_ms <= 1.15 * d * own_full_ms + 0.2
            if d == 1.0 and "flex_dense_causal" in base:
                extra["speedup_vs_flex_dense_causal"] = base["flex_dense_causal"] / t_ms
            row("triton_block_sparse", d, t_ms, flops, **extra)
        if flex is not None:
            if f_ms is not None:
                flex_same_layout_ms[d] = f_ms
                extra = dict(actual_density=actual, **timing.get("flex", {}))
                if cudnn_ms:
                    extra["speedup_vs_cudnn"] = cudnn_ms / f_ms
                row("flex_block_sparse", d, f_ms, flops, **extra)
            else:
                row("flex_block_sparse", d, None, flops, error=f_err, actual_density=actual)

        # correctness: triton vs flex on one layout per N
        if d == check_density and bm is not None and t_ms is not None:
            try:
                o_t = run_triton().float()
                o_f = flex(q, k, v, block_mask=bm, enable_gqa=True).float()
                err = (o_t - o_f).abs().max().item()
                ok = err <= 3e-2
                rows.append(dict(n=n, impl="check_triton_vs_flex", density=d, max_abs_err=err, ok=ok))
                print(f"  N={n:>6} check triton vs flex at density {d}: max|diff|={err:.3e} "
                      f"{'OK' if ok else 'MISMATCH'}", flush=True)
                del o_t, o_f
            except Exception as e:
                rows.append(dict(n=n, impl="check_triton_vs_flex", density=d, error=_err(e), ok=False))
        del bm, counts, idx
        torch.cuda.empty_cache()

    # optional: kernel tilings at density 1.0
    if args.sweep:
        counts, idx, pairs = make_layout(n, 1.0, seed=args.seed, device=dev)
        for c in SWEEP_CONFIGS:
            try:
                ms = bench_ms(lambda: block_sparse_attention(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK,
                                                             out=out, config=c), rep)
                row(f"sweep_{c.block_m}x{c.block_n}_w{c.num_warps}_s{c.num_stages}", 1.0, ms,
                    4.0 * pairs * D * HQ, config=c.__dict__)
            except Exception as e:
                row(f"sweep_{c.block_m}x{c.block_n}_w{c.num_warps}_s{c.num_stages}", 1.0, None,
                    4.0 * pairs * D * HQ, error=_err(e), config=c.__dict__)
    if args.variants:
        run_variants(n, q, k, v, out, rep, args, rows, flex_same_layout_ms, cudnn_ms)
    del q, k, v, out
    torch.cuda.empty_cache()


def run_variants(n, q, k, v, out, rep, args, rows, flex_ms: dict, cudnn_ms) -> None:
    """Time every VARIANTS config at each --variant-densities (same layouts as the main loop)."""
    for d in sorted(set(args.variant_densities), reverse=True):
        counts, idx, pairs = make_layout(n, d, seed=args.seed + int(d * 1000), device=q.device, share=args.share)
        flops = 4.0 * pairs * D * HQ
        ref = None
        for name, c in VARIANTS:
            used = c or bs_op.short_sequence_config(default_config(D, DTYPE, BLOCK, BLOCK), D, k, v, q.device)

            def fn(c=c):
                return block_sparse_attention(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK, causal=True,
                                              out=out, config=c)

            extra = dict(config=used.__dict__)
            try:
                ms = bench_ms(fn, rep)
                extra.update(launched_num_stages=bs_op.LAST_LAUNCH.get("num_stages"),
                             tma=bs_op.LAST_LAUNCH.get("tma"))
                o = fn().clone()
                if ref is None and c is None:
                    ref = o
                elif ref is not None:
                    extra["max_abs_diff_vs_default"] = (o.float() - ref.float()).abs().max().item()
                del o
                if cudnn_ms:
                    extra["speedup_vs_cudnn"] = cudnn_ms / ms
                if d in flex_ms:
                    extra["speedup_vs_flex_same_layout"] = flex_ms[d] / ms
                r = row(n, f"var_{name}", d, ms, flops, **extra)
                print(f"      stages launched={r['launched_num_stages']} tma={r['tma']} "
                      f"max|diff vs default|={r.get('max_abs_diff_vs_default', 0.0):.2e}", flush=True)
            except Exception as e:  # compile / launch failure: record, keep going
                row(n, f"var_{name}", d, None, flops, error=_err(e), **extra)
                if args.verbose:
                    traceback.print_exc()
        del counts, idx, ref
        torch.cuda.empty_cache()


def row(n, impl, density, ms, flops, rows=None, **extra):
    r = dict(n=n, impl=impl, density=density, ms=ms, tflops=tflops(flops, ms), **extra)
    (rows if rows is not None else _ROWS).append(r)
    shown = f"{ms:9.3f} ms {r['tflops']:7.1f} TFLOP/s" if ms is not None else f"failed: {extra.get('error')}"
    print(f"  N={n:>6} {impl:<26} density={density:<6.3f} {shown}", flush=True)
    return r


_ROWS: list[dict] = []


def print_table(rows: list[dict]) -> None:
    print()
    hdr = (f"{'N':>7} {'impl':<26} {'dens':>5} {'ms':>9} {'TFLOP/s':>8} {'x cuDNN':>8} {'x flex':>7} "
           f"{'t/(d*full)':>10} {'graph ms':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r["impl"].startswith("check"):
            status = "OK" if r.get("ok") else "MISMATCH"
            err = r.get("max_abs_err", float("nan"))
            print(f"{r['n']:>7} {r['impl']:<26} {r['density']:>5.2f} max|diff|={err:.2e} {status} {r.get('error', '')}")
            continue
        if r.get("ms") is None:
            print(f"{r['n']:>7} {r['impl']:<26} {r['density']:>5.2f} failed: {r.get('error', '')[:60]}")
            continue

        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"

        var = (f"  stages={r.get('launched_num_stages')} tma={r.get('tma')} "
               f"diff={f('max_abs_diff_vs_default', '.1e')}") if r["impl"].startswith("var_") else ""
        print(f"{r['n']:>7} {r['impl']:<26} {r['density']:>5.2f} {r['ms']:>9.3f} {r['tflops']:>8.1f} "
              f"{f('speedup_vs_cudnn', '>8.2f'):>8} {f('speedup_vs_flex_same_layout', '>7.2f'):>7} "
              f"{f('ratio_vs_density_x_own_full', '>10.3f'):>10} {f('graph_ms', '>9.3f'):>9}{var}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", nargs="+", default=["8k", "32k", "128k"], help="sequence lengths (8k 32k 128k)")
    ap.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.5, 0.2, 0.1, 0.05])
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--config", nargs=4, type=int, metavar=("BLOCK_M", "BLOCK_N", "WARPS", "STAGES"),
                    help="override the kernel tiling")
    ap.add_argument("--sweep", action="store_true", help="also time a few kernel tilings at density 1.0")
    ap.add_argument("--variants", action="store_true",
                    help="also time the VARIANTS configs (TMA, stages, tiles) at --variant-densities")
    ap.add_argument("--variant-densities", nargs="+", type=float, default=[1.0, 0.05])
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep time (default by N)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--share", choices=SHARES, default="head",
                    help="heads drawing the same scattered blocks: each head its own (default), the query heads of "
                         "one KV group, or all heads")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernel.py needs a CUDA GPU")

    rows = _ROWS
    for s in args.n:
        n = parse_n(s)
        print(f"== N={n}", flush=True)
        try:
            run_n(n, args.densities, args, rows)
        except torch.cuda.OutOfMemoryError as e:
            rows.append(dict(n=n, impl="all", error=_err(e)))
            torch.cuda.empty_cache()

    meta = device_meta(
        shape=dict(B=B, Hq=HQ, Hkv=HKV, D=D, block=BLOCK, dtype=str(DTYPE)),
        layout_share=args.share,
        default_config=default_config(D, DTYPE, BLOCK, BLOCK).__dict__,
        default_rule=f"Nk <= {bs_op.ONE_LOOP_MAX_NK}: short_sequence_config (one loop, host TMA, 3 stages)",
        config_override=args.config,
        variants=[(name, (c or default_config(D, DTYPE, BLOCK, BLOCK)).__dict__) for name, c in VARIANTS]
        if args.variants else None,
    )
    out_path = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"bench_kernel_{_dt.datetime.now().strftime('%Y%m%d_%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1, default=str)
    print(f"\n{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  -> {out_path}")
    print_table(rows)


if __name__ == "__main__":
    main()
