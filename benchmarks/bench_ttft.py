"""Time to first token of a Llama-3.1-8B-shaped model: transformers' SDPA vs sparsekit (one GPU).

The model is built from Llama-3.1-8B's config values (hidden 4096, 32 layers, 32/8 heads, head dim 128,
intermediate 14336, vocab 128256, rope theta 500000 with llama3 scaling, 131072 positions) with *random*
bf16 weights created on the GPU (nothing is downloaded). Inputs are random token ids, batch 1. TTFT is
one forward over the whole prompt under ``torch.inference_mode()`` with ``logits_to_keep=1`` (only the last
position's logits), timed with CUDA synchronisation: median of ``--repeats`` runs after one warm-up run.

Each configuration runs in the same process on the same weights:

* ``sdpa``: ``attn_implementation="sdpa"`` (torch SDPA, the flash/cuDNN backends);
* ``sparsekit``: ``sparsekit.hf.enable(model, "proxyattn", kernel="auto")`` (triton kernel on the GPU),
  ``min_seq_len=0`` so every length goes sparse; extra configurations with ``--gamma`` (budget gamma) and
  ``--kernel`` (e.g. ``--kernel auto flex``).

The density reached (kept / causal blocks, averaged over layers) comes from ``sparsekit.hf.stats``;
with ``--profile`` (default) one more forward per sparse configuration runs with ``timing=True`` to split the
attention time into estimate / budget / mask / attend (these timings synchronise every stage).

Random weights give diffuse attention, so ProxyAttn's dynamic budget keeps more blocks than on a trained
model (the paper reports 0.69-0.80 sparsity on Llama-3.1-8B at gamma 0.95/0.90); the density is printed
next to every time so that numbers are read with it. ``--layers N`` builds only N decoder layers (less
memory and time); the TTFT is then of an N-layer model and the output says so.

Usage::

    python benchmarks/bench_ttft.py --lengths 32k 64k 128k --out benchmarks/results/ttft_h100.json
    python benchmarks/bench_ttft.py --lengths 32k --layers 4 --gamma 0.95 0.9 --repeats 2
    python benchmarks/bench_ttft.py --budget "fixed(ratio=0.2)" --kernel auto flex
    python benchmarks/bench_ttft.py --lengths 128k --dense-above 0.85   # defaults, dense attention above 85%
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from _common import device_meta, parse_n  # benchmarks/_common.py

LLAMA31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
    hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False, bos_token_id=128000,
    eos_token_id=128001,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
)


def build_model(layers: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg_kwargs = dict(LLAMA31_8B, num_hidden_layers=layers)
    rope = cfg_kwargs.pop("rope_scaling")
    theta = cfg_kwargs.pop("rope_theta")
    try:  # transformers 5.x: rope settings live in rope_parameters
        cfg = LlamaConfig(**cfg_kwargs, rope_parameters={**rope, "rope_theta": theta})
    except TypeError:
        cfg = LlamaConfig(**cfg_kwargs, rope_scaling=rope, rope_theta=theta)
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def ttft(model: Any, ids: torch.Tensor, repeats: int, use_cache: bool) -> list[float]:
    times = []
    for i in range(repeats + 1):  # the first run warms up (Triton compilation, autotuning, allocator)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=ids, logits_to_keep=1, use_cache=use_cache)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1e3
        del out
        if i > 0:
            times.append(dt)
    return times


def layer_summary(stats: list[dict[str, Any]]) -> dict[str, Any]:
    sparse = [r for r in stats if r.get("route") == "sparse"]
    out: dict[str, Any] = {"layers_sparse": len(sparse), "layers_total": len(stats)}
    if sparse:
        dens = [r["density"] for r in sparse if "density" in r]
        out["density_mean"] = statistics.fmean(dens) if dens else None
        out["density_min"] = min(dens) if dens else None
        out["density_max"] = max(dens) if dens else None
        out["density_per_layer"] = dens
        out["kernels"] = sorted({str(r.get("kernel")) for r in sparse})
        if any("dense_fallback" in r for r in sparse):  # dense_above set: layers whose plan ran dense attention
            out["layers_dense_fallback"] = sum(bool(r.get("dense_fallback")) for r in sparse)
        ratios = [x for r in sparse for row in r.get("budget_ratio_per_head", []) for x in row]
        out["budget_ratio_mean"] = statistics.fmean(ratios) if ratios else None
        timings: dict[str, float] = {}
        for r in sparse:
            for k, v in r.get("timings_ms", {}).items():
                timings[k] = timings.get(k, 0.0) + v
        if timings:
            out["timings_ms_sum_over_layers"] = timings
    reasons = sorted({str(r.get("reason")) for r in stats if r.get("route") != "sparse"})
    if reasons:
        out["sdpa_reasons"] = reasons
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", nargs="+", default=["32k", "64k", "128k"], help="prompt lengths (e.g. 32k 131072)")
    ap.add_argument("--layers", type=int, default=32, help="decoder layers to build (32 = the full model)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (after one warm-up)")
    ap.add_argument("--gamma", type=float, nargs="*", default=[],
                    help="extra sparsekit configurations: proxyattn with budget dynamic(gamma=G)")
    ap.add_argument("--budget", nargs="*", default=[],
                    help="extra configurations with a budget spec replacing ProxyAttn's dynamic one, e.g. "
                         "'fixed(ratio=0.2)': the proxy estimator ranks blocks, a controlled density is kept (random "
                         "weights give diffuse attention, so this shows the speed at a trained model's density)")
    ap.add_argument("--kernel", nargs="+", default=["auto"],
                    help="sparsekit kernel(s), one configuration each (default auto: triton on the GPU; also flex)")
    ap.add_argument("--use-cache", action="store_true", help="fill a DynamicCache during prefill (+2 GiB per 16K tok)")
    ap.add_argument("--no-profile", action="store_true", help="skip the extra timed forward splitting the stages")
    ap.add_argument("--dense-above", type=float, nargs="*", default=[],
                    help="extra configurations: proxyattn defaults with dense_above=X (plans at least that dense "
                         "run dense attention)")
    ap.add_argument("--no-defaults", action="store_true",
                    help="skip the proxyattn-defaults configuration (only --gamma / --budget ones, and sdpa)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("bench_ttft.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers

    import sparsekit
    import sparsekit.hf as skhf

    torch.manual_seed(args.seed)
    lengths = [parse_n(s) for s in args.lengths]
    t0 = time.perf_counter()
    model = build_model(args.layers)
    build_s = time.perf_counter() - t0
    configs: list[tuple[str, dict[str, Any] | None]] = [("sdpa", None)]
    for kern in args.kernel:
        tag = "" if kern == "auto" else f"-{kern}"
        if not args.no_defaults:
            configs.append((f"sparsekit{tag}", {"kernel": kern}))
        for g in args.gamma:
            configs.append((f"sparsekit{tag}-gamma{g:g}", {"kernel": kern, "budget": {"gamma": g}}))
        for spec in args.budget:
            configs.append((f"sparsekit{tag}-{spec.replace(' ', '')}", {"kernel": kern, "budget": spec}))
        for x in args.dense_above:
            configs.append((f"sparsekit{tag}-dense_above{x:g}", {"kernel": kern, "dense_above": x}))

    meta = {
        "benchmark": "ttft", **device_meta(),
        "transformers": transformers.__version__, "sparsekit": sparsekit.__version__,
        "model": {**LLAMA31_8B, "num_hidden_layers": args.layers, "weights": "random bf16 (std 0.02 init)"},
        "layers_note": (None if args.layers == 32 else
                        f"only {args.layers} of Llama-3.1-8B's 32 decoder layers were built: TTFT is of that model"),
        "batch": 1, "dtype": "bfloat16", "logits_to_keep": 1, "use_cache": args.use_cache,
        "repeats": args.repeats, "model_build_s": build_s,
    }
    results: list[dict[str, Any]] = []
    for n in lengths:
        ids = torch.randint(0, LLAMA31_8B["vocab_size"], (1, n), device="cuda")
        for name, opts in configs:
            row: dict[str, Any] = {"n": n, "config": name}
            try:
                if opts is None:
                    skhf.disable(model) if model.config._attn_implementation == "sparsekit" else None
                    model.set_attn_implementation("sdpa")
                else:
                    skhf.enable(model, "proxyattn", min_seq_len=0, **opts)
                    row["pipeline"] = skhf.settings(model).default.name
                torch.cuda.reset_peak_memory_stats()
                times = ttft(model, ids, args.repeats, args.use_cache)
                row.update(ttft_ms_median=statistics.median(times), ttft_ms=times,
                           peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
                if opts is not None:
                    row.update(layer_summary(skhf.stats(model)))
                    if not args.no_profile:
                        skhf.enable(model, "proxyattn", min_seq_len=0, timing=True, **opts)
                        with torch.inference_mode():
                            model(input_ids=ids, logits_to_keep=1, use_cache=False)
                        prof = layer_summary(skhf.stats(model))
                        row["profile_timings_ms_sum_over_layers"] = prof.get("timings_ms_sum_over_layers")
            except Exception as exc:  # noqa: BLE001 - a failing config must not lose the others
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc(limit=6)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "density_per_layer")}),
                  flush=True)
            gc.collect()
            torch.cuda.empty_cache()
        del ids
    skhf.disable(model) if model.config._attn_implementation == "sparsekit" else None

    report = {"meta": meta, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(meta, results)
    return 0


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return None


def print_table(meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    print()
    print(f"TTFT, Llama-3.1-8B shape ({meta['model']['num_hidden_layers']} layers), random bf16 weights, batch 1, "
          f"{meta['gpu']}, torch {meta['torch']}, transformers {meta['transformers']}")
    if meta["layers_note"]:
        print(f"NOTE: {meta['layers_note']}")
    base = {r["n"]: r.get("ttft_ms_median") for r in results if r["config"] == "sdpa"}
    print(f"{'N':>7} {'config':<34} {'TTFT ms':>10} {'vs sdpa':>8} {'density':>8} {'est+budget+mask ms':>19} "
          f"{'attend ms':>10} {'peak GiB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['n']:>7} {r['config']:<34} ERROR {r['error'][:80]}")
            continue
        t = r["ttft_ms_median"]
        b = base.get(r["n"])
        speed = f"{b / t:.2f}x" if b and r["config"] != "sdpa" else ""
        dens = f"{r['density_mean']:.3f}" if r.get("density_mean") is not None else ""
        prof = r.get("profile_timings_ms_sum_over_layers") or {}
        plan = sum(prof.get(k, 0.0) for k in ("estimate", "budget", "mask"))
        plan_s = f"{plan:.1f}" if prof else ""
        att_s = f"{prof['attend']:.1f}" if "attend" in prof else ""
        print(f"{r['n']:>7} {r['config']:<34} {t:>10.1f} {speed:>8} {dens:>8} {plan_s:>19} {att_s:>10} "
              f"{r['peak_mem_gib']:>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
