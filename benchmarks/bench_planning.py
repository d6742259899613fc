"""Benchmark of ProxyAttn's planning (estimate + budget + mask) on one GPU (meant for an H100).

bf16, B=1, D=128, blocks 128x128, causal prefill, ``proxy(stride=4)`` + ``dynamic(gamma=0.95,
min_budget=2048)`` + ``topk``, for two shape sets:

* ``llama-3.1-8b``: 32 query heads, 8 KV heads, proxy groups G=1;
* ``qwen2.5-7b``: 28 query heads, 4 KV heads, G=4 (the paper's choice for Qwen).

For each shape and N (default 8K 32K 128K 256K):

1. each planning stage alone (``estimate``, ``budget``, ``mask``) and the whole ``attn.plan`` with
   ``triton.testing.do_bench`` medians, the pipeline's own ``plan(timed=True)`` stage timings (median of a
   few runs; they include a synchronisation per stage), at N <= ``HOST_MAX_N`` (32K) the host's time per stage
   (``host_us``: 200 calls queued, a stage is host-bound when it exceeds the do_bench figure; the mask's
   ``max_k`` read waits for the GPU once per call), and, at
   N <= ``--torch-max-n``, the plain-torch stages (``impl="torch"``) for reference;
2. dense causal attention with torch SDPA's cuDNN backend in the same run (once, with CUDA events, where
   ``do_bench`` would take too long: N >= 256K); planning is reported as a percentage of it;
3. end to end at 32K and 128K (Llama shape): ``sparsekit.build("proxyattn", kernel="triton")`` (plan + the
   Triton block-sparse kernel) against SDPA cuDNN and flash (dense causal), with the plan's density; one row per
   ``--e2e-gamma`` (the budget's gamma; 0.95 is the preset);
4. a 1M-token plan + attend of one Llama layer: ``torch.cuda.max_memory_allocated`` (OOM caught and
   reported), timings, density and ``max_k``.

Inputs: ``sparsekit.workloads.SyntheticWorkload(...).generate(bf16, "cuda")`` up to ``--cpu-gen-max-n``
(128K); beyond, the same recipe generated directly on the GPU per KV head (``device_workload``; the CPU
generator would need ~50 GB of host memory and minutes at 1M). The generator used is recorded per row.

Usage::

    python benchmarks/bench_planning.py --out benchmarks/results/planning_h100.json
    python benchmarks/bench_planning.py --quick          # 32K and 128K, Llama only, no 1M check
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sparsekit  # noqa: E402
from sparsekit.workloads import SyntheticWorkload  # noqa: E402
from _common import device_meta, host_us, parse_n  # noqa: E402  (benchmarks/_common.py)

DTYPE = torch.bfloat16
D, BLOCK, STRIDE = 128, 128, 4
#: lengths up to which the planning rows also record the host's time per stage (``host_us``)
HOST_MAX_N = 32768
SHAPES = {
    "llama-3.1-8b": dict(heads=32, kv_heads=8, g=1),
    "qwen2.5-7b": dict(heads=28, kv_heads=4, g=4),
}
ROWS: list[dict] = []


def fmt_n(n: int) -> str:
    return f"{n // (1 << 20)}M" if n % (1 << 20) == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def bench_ms(fn, n: int) -> float:
    rep = 100 if n <= 32768 else 300
    return float(triton.testing.do_bench(fn, warmup=max(25, rep // 4), rep=rep, return_mode="median"))


def _warm(fn, seconds: float) -> None:
    """Call ``fn`` repeatedly for about ``seconds`` of wall time (host and device), then synchronize."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        torch.cuda.synchronize()


def once_ms(fn) -> float:
    """One timed call after one warm-up call (for calls that take seconds)."""
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    torch.cuda.synchronize()
    return float(a.elapsed_time(b))


def row(**kw) -> dict:
    ROWS.append(kw)
    print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()), flush=True)
    return kw


# ------------------------------------------------------------------------------------------------
# inputs


@torch.no_grad()
def device_workload(wl: SyntheticWorkload, dtype: torch.dtype, device: str = "cuda"):
    """``SyntheticWorkload``'s recipe generated on the GPU, one KV head at a time (same structure: sink,
    local window, vertical tokens, needles, per-head sharpness; different random numbers)."""
    g = torch.Generator(device=device).manual_seed(wl.seed)
    B, H, Hkv, N, Dh = wl.batch, wl.heads, wl.kv_heads, wl.n, wl.head_dim
    grp = H // Hkv
    Fq = min(32, (Dh - 2) // 4)
    sd = math.sqrt(Dh)
    pos = torch.arange(N, dtype=torch.float64, device=device)
    freqs = (torch.arange(Fq, dtype=torch.float64, device=device) + 0.5) / Fq * (2 * math.pi / wl.window)
    ang = pos[:, None] * freqs[None, :]
    P = (torch.cat([ang.cos(), ang.sin()], dim=-1).float() / math.sqrt(Fq))  # [N, 2F]
    del ang, pos
    s_dim, v_dim, c0 = 2 * Fq, 2 * Fq + 1, 2 * Fq + 2
    a = math.sqrt(sd)
    q = torch.empty(B, H, N, Dh, dtype=dtype, device=device)
    k = torch.empty(B, Hkv, N, Dh, dtype=dtype, device=device)
    v = torch.empty(B, Hkv, N, Dh, dtype=dtype, device=device)
    lo, hi = wl.sharpness
    noise = wl.noise / math.sqrt(Dh - c0) * math.sqrt(sd)
    for b in range(B):
        for h in range(Hkv):
            kh = torch.randn(N, Dh, generator=g, device=device) * noise
            qh = torch.randn(N, Dh, generator=g, device=device) * noise
            kh[:, :c0] = 0
            qh[:, :c0] = 0
            kh[:, : 2 * Fq] += a * P * math.sqrt(wl.local_logit)
            qh[:, : 2 * Fq] += a * P * math.sqrt(wl.local_logit)
            kh[0, s_dim] += a * math.sqrt(wl.sink_logit)
            qh[:, s_dim] += a * math.sqrt(wl.sink_logit)
            vt = torch.randperm(N - 1, generator=g, device=device)[: wl.vertical_tokens] + 1
            kh[vt, v_dim] += a * math.sqrt(wl.vertical_logit)
            for _ in range(wl.needles):
                t = int(torch.randint(0, max(1, N - 2 * wl.window), (1,), generator=g, device=device))
                c = torch.randn(Dh - c0, generator=g, device=device)
                c = c / c.norm() * a * math.sqrt(wl.needle_logit)
                kh[t, c0:] += c
                qh[N - wl.needle_rows:, c0:] += c
            qh[:, v_dim] += a * math.sqrt(wl.vertical_logit)
            k[b, h] = kh.to(dtype)
            del kh
            sharp = lo + (hi - lo) * torch.rand(grp, generator=g, device=device)
            for j in range(grp):
                q[b, h * grp + j] = (qh * sharp[j] + 0.1 * torch.randn(N, Dh, generator=g, device=device)).to(dtype)
            del qh
            v[b, h] = torch.randn(N, Dh, generator=g, device=device).to(dtype)
    return q, k, v


def make_inputs(shape: str, n: int, cpu_gen_max_n: int):
    cfg = SHAPES[shape]
    wl = SyntheticWorkload(n=n, heads=cfg["heads"], kv_heads=cfg["kv_heads"], head_dim=D, seed=0)
    t0 = time.perf_counter()
    if n <= cpu_gen_max_n:
        q, k, v = wl.generate(DTYPE, "cuda")
        gen = "SyntheticWorkload.generate"
    else:
        q, k, v = device_workload(wl, DTYPE, "cuda")
        gen = "device_workload"
    torch.cuda.synchronize()
    return q, k, v, gen, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# dense baselines


def sdpa_fn(backend, q, k, v):
    from torch.nn.attention import sdpa_kernel

    grp = q.shape[1] // k.shape[1]
    try:
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q[:, :, :256], k[:, :, :256], v[:, :, :256], is_causal=True,
                                           enable_gqa=True)

        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return fn, "enable_gqa"
    except RuntimeError:
        ke, ve = k.repeat_interleave(grp, 1), v.repeat_interleave(grp, 1)

        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
        return fn, "kv expanded (backend rejected enable_gqa)"


def time_dense(backend_name: str, q, k, v, n: int, once_from: int) -> tuple[float | None, str]:
    from torch.nn.attention import SDPBackend

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]
    try:
        fn, how = sdpa_fn(backend, q, k, v)
        if n >= once_from:
            return once_ms(fn), how + ", timed once"
        return bench_ms(fn, n), how
    except Exception as e:  # noqa: BLE001 - a missing backend is a result, not a crash
        return None, _err(e)
    finally:
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# planning


def build(shape: str, impl: str, kernel: str = "triton", gamma: float | None = None):
    g = SHAPES[shape]["g"]
    budget = {"impl": impl} if gamma is None else {"impl": impl, "gamma": gamma}
    return sparsekit.build("proxyattn", estimator={"g": g, "stride": STRIDE, "impl": impl},
                           budget=budget, kernel=kernel)


def time_planning(attn, q, k, n: int, prefix: str, common: dict) -> dict:
    """do_bench medians of each stage alone and of the whole plan; plan(timed=True) medians."""
    problem = attn.problem(q, k)
    est, bud, mask = attn.estimator, attn.budgeter, attn.mask
    scores = est.estimate(problem)
    budget = bud.allocate(problem, scores)
    # the short stages are host-launch bound at 32K: the first case timed in a process used to come out up to
    # 1.6x slower (cold CPU caches / clocks) unless the whole plan ran for a while first
    _warm(lambda: attn.plan(q, k, timed=False), seconds=0.5)
    out = {}
    out["estimate_ms"] = bench_ms(lambda: est.estimate(problem), n)
    out["budget_ms"] = bench_ms(lambda: bud.allocate(problem, scores), n)
    out["mask_ms"] = bench_ms(lambda: mask.build(problem, scores, budget), n)
    out["plan_ms"] = bench_ms(lambda: attn.plan(q, k, timed=False), n)
    if n <= HOST_MAX_N:  # short plans can be bound by the host: its time per stage, 200 calls queued
        out["host_us"] = {"estimate": host_us(lambda: est.estimate(problem)),
                          "budget": host_us(lambda: bud.allocate(problem, scores)),
                          "mask": host_us(lambda: mask.build(problem, scores, budget))}
    runs = [attn.plan(q, k, timed=True).timings for _ in range(5)]
    for key in ("estimate", "budget", "mask"):
        out[f"timed_{key}_ms"] = statistics.median(r.get(key, float("nan")) for r in runs)
    layout = attn.plan(q, k, timed=False).layout
    out["density"] = float(layout.density())
    out["max_k"] = int(layout.max_k)
    return row(**common, impl=prefix, **out)


def run_shape_n(shape: str, n: int, args) -> None:
    print(f"== {shape} N={fmt_n(n)}", flush=True)
    q, k, v, gen, gen_s = make_inputs(shape, n, args.cpu_gen_max_n)
    common = dict(shape=shape, n=n, generator=gen)
    row(**common, impl="inputs", gen_s=gen_s)
    dense_ms, how = time_dense("cudnn", q, k, v, n, args.dense_once_from)
    row(**common, impl="sdpa_cudnn_dense_causal", ms=dense_ms, note=how)
    try:
        r = time_planning(build(shape, "auto"), q, k, n, "plan_triton", common)
        if dense_ms:
            parts = {key: 100 * r[f"{key}_ms"] / dense_ms for key in ("estimate", "budget", "mask", "plan")}
            row(**common, impl="plan_pct_of_dense", **{f"{key}_pct": val for key, val in parts.items()})
    except torch.cuda.OutOfMemoryError as e:
        row(**common, impl="plan_triton", error=_err(e))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        row(**common, impl="plan_triton", error=_err(e))
    if n <= args.torch_max_n:
        try:
            time_planning(build(shape, "torch"), q, k, n, "plan_torch", common)
        except Exception as e:  # noqa: BLE001
            row(**common, impl="plan_torch", error=_err(e))
    del q, k, v
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# end to end and the 1M check


def run_e2e(n: int, args) -> None:
    shape = "llama-3.1-8b"
    print(f"== end to end {shape} N={fmt_n(n)}", flush=True)
    q, k, v, gen, _ = make_inputs(shape, n, args.cpu_gen_max_n)
    common = dict(shape=shape, n=n, generator=gen)
    for backend in ("cudnn", "flash"):
        ms, how = time_dense(backend, q, k, v, n, args.dense_once_from)
        row(**common, impl=f"e2e_sdpa_{backend}_dense_causal", ms=ms, note=how)
    for gamma in args.e2e_gamma:
        _e2e_sparse(shape, n, q, k, v, gamma, common)
    del q, k, v
    torch.cuda.empty_cache()


def _e2e_sparse(shape: str, n: int, q, k, v, gamma: float, common: dict) -> None:
    impl = "e2e_proxyattn_triton" + ("" if gamma == 0.95 else f"_gamma{gamma:g}")
    try:
        attn = build(shape, "auto", kernel="triton", gamma=gamma)
        plan = attn.plan(q, k, timed=False)
        row(**common, impl=impl, gamma=gamma, ms=bench_ms(lambda: attn(q, k, v), n),
            plan_ms=bench_ms(lambda: attn.plan(q, k, timed=False), n),
            attend_ms=bench_ms(lambda: attn.run(plan, v), n), density=float(plan.density), max_k=int(plan.layout.max_k))
        # accuracy against dense on the last 1024 rows (cheap): relative error and attention recall
        out = attn.run(plan, v)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        tail = 1024
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            grp = q.shape[1] // k.shape[1]
            ref = F.scaled_dot_product_attention(q[:, :, -tail:], k.repeat_interleave(grp, 1),
                                                 v.repeat_interleave(grp, 1), is_causal=False,
                                                 attn_mask=_tail_causal_mask(tail, n, q.device))
        rel = float((out[:, :, -tail:].float() - ref.float()).norm() / ref.float().norm())
        row(**common, impl=impl.replace("_triton", "_accuracy"), gamma=gamma, rel_err_last_1024_rows=rel)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        row(**common, impl=impl, gamma=gamma, error=_err(e))


def _tail_causal_mask(tail: int, n: int, device) -> torch.Tensor:
    rows = torch.arange(n - tail, n, device=device)[:, None]
    return torch.arange(n, device=device)[None, :] <= rows


def run_1m(n: int, args) -> None:
    shape = "llama-3.1-8b"
    print(f"== memory check {shape} N={fmt_n(n)} (one layer, plan + attend)", flush=True)
    common = dict(shape=shape, n=n)
    try:
        q, k, v, gen, gen_s = make_inputs(shape, n, args.cpu_gen_max_n)
    except torch.cuda.OutOfMemoryError as e:
        row(**common, impl="mem_1m", error="inputs: " + _err(e))
        return
    common["generator"] = gen
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res: dict = dict(inputs_gb=base / 2**30, gen_s=gen_s)
    try:
        attn = build(shape, "auto", kernel="triton")
        t0 = time.perf_counter()
        plan = attn.plan(q, k, timed=True)
        res.update({f"timed_{key}_ms": val for key, val in plan.timings.items()})
        res["plan_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        res["density"], res["max_k"] = float(plan.density), int(plan.layout.max_k)
        res["layout_gb"] = (plan.layout.kv_indices.numel() * 4 + plan.layout.kv_counts.numel() * 4) / 2**30
        t1 = time.perf_counter()
        out = attn.run(plan, v, timed=True)
        torch.cuda.synchronize()
        res["attend_ms"] = plan.timings.get("attend")
        res["plan_plus_attend_s"] = time.perf_counter() - t0
        res["attend_s"] = time.perf_counter() - t1
        res["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        res["ok"] = bool(torch.isfinite(out[:, :, -4:]).all())
        del out, plan
    except torch.cuda.OutOfMemoryError as e:
        res.update(peak_gb=torch.cuda.max_memory_allocated() / 2**30, error="OOM: " + _err(e))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        res.update(error=_err(e))
    res["total_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    row(**common, impl="mem_1m", **res)
    del q, k, v
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    print("\nplanning (do_bench medians, ms) and share of dense cuDNN attention")
    print(f"{'shape':<14}{'N':>6}{'impl':>13}{'estimate':>10}{'budget':>9}{'mask':>9}{'plan':>9}"
          f"{'dense':>10}{'plan%':>8}{'density':>9}")
    dense = {(r["shape"], r["n"]): r.get("ms") for r in rows if r.get("impl") == "sdpa_cudnn_dense_causal"}
    for r in rows:
        if r.get("impl") not in ("plan_triton", "plan_torch") or "plan_ms" not in r:
            continue
        d = dense.get((r["shape"], r["n"]))
        pct = f"{100 * r['plan_ms'] / d:7.2f}%" if d else "      -"
        host = r.get("host_us")
        host = "  host us " + " / ".join(f"{host[k]:.0f}" for k in ("estimate", "budget", "mask")) if host else ""
        print(f"{r['shape']:<14}{fmt_n(r['n']):>6}{r['impl']:>13}{r['estimate_ms']:>10.3f}{r['budget_ms']:>9.3f}"
              f"{r['mask_ms']:>9.3f}{r['plan_ms']:>9.3f}{(d or float('nan')):>10.2f}{pct:>8}{r['density']:>9.3f}"
              f"{host}")
    e2e = [r for r in rows if str(r.get("impl", "")).startswith("e2e_") and "ms" in r]
    if e2e:
        print("\nend to end (ms)")
        for r in e2e:
            extra = f"  plan {r['plan_ms']:.2f}  attend {r['attend_ms']:.2f}  density {r['density']:.3f}" \
                if "plan_ms" in r else ""
            ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
            print(f"  {fmt_n(r['n']):>5} {r['impl']:<32} {ms:>9}{extra}")
    for r in rows:
        if r.get("impl") == "mem_1m":
            print("\n1M memory check: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in r.items() if k not in ("shape",)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", nargs="+", default=["8k", "32k", "128k", "256k"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--e2e-n", nargs="*", default=["32k", "128k"])
    ap.add_argument("--e2e-gamma", nargs="+", type=float, default=[0.95],
                    help="budget gamma of each end-to-end configuration (0.95: the preset)")
    ap.add_argument("--mem-n", default="1m", help="length of the plan+attend memory check ('' to skip)")
    ap.add_argument("--torch-max-n", type=parse_n, default=parse_n("32k"),
                    help="also time the plain-torch stages up to this N")
    ap.add_argument("--dense-once-from", type=parse_n, default=parse_n("256k"),
                    help="time dense attention once (CUDA events) from this N")
    ap.add_argument("--cpu-gen-max-n", type=parse_n, default=parse_n("128k"),
                    help="largest N generated by SyntheticWorkload on the CPU; longer ones on the GPU")
    ap.add_argument("--quick", action="store_true", help="32K and 128K, Llama only, e2e at 32K, no 1M check")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_planning.py needs a CUDA GPU")
    if args.quick:
        args.n, args.shapes, args.e2e_n, args.mem_n = ["32k", "128k"], ["llama-3.1-8b"], ["32k"], ""

    t_start = time.perf_counter()
    for shape in args.shapes:
        for s in args.n:
            try:
                run_shape_n(shape, parse_n(s), args)
            except torch.cuda.OutOfMemoryError as e:
                row(shape=shape, n=parse_n(s), impl="all", error=_err(e))
                torch.cuda.empty_cache()
    for s in args.e2e_n:
        try:
            run_e2e(parse_n(s), args)
        except torch.cuda.OutOfMemoryError as e:
            row(shape="llama-3.1-8b", n=parse_n(s), impl="e2e", error=_err(e))
            torch.cuda.empty_cache()
    if args.mem_n:
        run_1m(parse_n(args.mem_n), args)

    meta = device_meta(
        cudnn=torch.backends.cudnn.version(), wall_s=time.perf_counter() - t_start,
        setup=dict(B=1, D=D, dtype=str(DTYPE), block=BLOCK, stride=STRIDE, shapes=SHAPES,
                   preset="proxyattn (gamma=0.95, min_budget=2048, topk)", args=vars(args)),
    )
    out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        f"bench_planning_{_dt.datetime.now().strftime('%Y%m%d_%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as fh:
        json.dump(dict(meta=meta, rows=ROWS), fh, indent=1, default=str)
    print(f"\n{meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  -> {out_path}")
    print_table(ROWS)


if __name__ == "__main__":
    main()
