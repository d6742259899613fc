"""Evaluate the retrieval LM densely and under every shipped sparse strategy, through ``sparsekit.hf``.

    python examples/retrieval_lm/evaluate.py --model examples/retrieval_lm/model --out results.json
    python examples/retrieval_lm/evaluate.py --tiny --model /tmp/rlm/model --out /tmp/rlm/eval.json  # CPU smoke

1. **Dense** exact-match accuracy (SDPA) at each ``--lengths`` on held-out prompts (``data.make_prompts``, fixed
   seeds that depend only on the length; one query at the end, its pair at a random depth), with accuracy per
   depth bucket.
2. **Head analysis** (``--analysis-length``, a few prompts, dense): the attention of every head is captured
   through a transformers ``AttentionInterface`` wrapper (``"retrieval_lm_capture"``; the output is SDPA's), pooled
   to block level (``block_q x block_k``): for each q-block, the share of its rows' softmax mass in each kv-block.
   Per layer and KV group: mean pairwise Jensen-Shannon divergence (bits, per q-block, averaged) and cosine
   similarity of those block-mass maps, Jaccard overlap of the blocks each head needs for 90% of its mass, all
   compared with pairs of heads from *different* KV groups; per head: oracle density (smallest share of causal
   blocks holding ``gamma`` of each q-block's mass, gamma 0.9/0.95/0.99), mass of the answer row on the needle
   pair (retrieval heads) and on the sink block.
3. **Sparse**: for each (preset, budget) of the grid, ``sparsekit.hf.enable(model, preset, min_seq_len=0,
   **options)``; accuracy, mean density (kept / causal blocks, mean over layers and prompts, from
   ``sparsekit.hf.stats``), per-layer and per-head densities, the kernel used.

Results go to ``--out`` (JSON, rewritten after every unit of work, with device, versions and date) and a table
on stdout. ``--max-minutes`` bounds the run: work is done in priority order (dense, analysis, each preset's
default, then the other budgets) and whatever does not fit is listed as skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def _load_sibling(stem: str):
    """``examples/retrieval_lm/<stem>.py`` as module ``retrieval_lm_<stem>`` (a unique name: no clash with other
    modules called ``data``, and no sys.path entry needed)."""
    import importlib.util

    name = f"retrieval_lm_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{stem}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


D = _load_sibling("data")

CAPTURE = "retrieval_lm_capture"
GAMMAS = (0.9, 0.95, 0.99)

#: (label, preset, enable() options). Defaults of each preset first (priority order), then budget sweeps.
#: Budgets for every strategy family: dynamic / cumulative mass thresholds (proxyattn, xattention, flexprefill),
#: fixed ratios of the causal blocks (vertical_slash, block_topk), local window sizes (streaming).
GRID_FULL: list[tuple[str, str, dict[str, Any]]] = [
    ("proxyattn", "proxyattn", {}),
    ("xattention", "xattention", {}),
    ("flexprefill", "flexprefill", {}),
    ("vertical_slash", "vertical_slash", {}),
    ("block_topk", "block_topk", {}),
    ("streaming", "streaming", {}),
    # round 1 of the sweeps (one budget per strategy, so a run cut short still covers every family)
    ("proxyattn gamma=0.9 min=256", "proxyattn", {"budget": {"gamma": 0.9, "min_budget": 256}}),
    ("xattention gamma=0.8", "xattention", {"budget": {"gamma": 0.8}}),
    ("flexprefill gamma=0.8 min=256", "flexprefill", {"budget": {"gamma": 0.8, "min_budget": 256}}),
    ("vertical_slash ratio=0.1", "vertical_slash", {"budget": {"blocks": None, "ratio": 0.1}}),
    ("block_topk ratio=0.1", "block_topk", {"budget": {"blocks": None, "ratio": 0.1}}),
    ("streaming local=2", "streaming", {"mask": {"local_blocks": 2}}),
    # round 2
    ("proxyattn gamma=0.95 min=256", "proxyattn", {"budget": {"gamma": 0.95, "min_budget": 256}}),
    ("xattention gamma=0.95", "xattention", {"budget": {"gamma": 0.95}}),
    ("flexprefill gamma=0.95 min=256", "flexprefill", {"budget": {"gamma": 0.95, "min_budget": 256}}),
    ("vertical_slash ratio=0.05", "vertical_slash", {"budget": {"blocks": None, "ratio": 0.05}}),
    ("block_topk ratio=0.05", "block_topk", {"budget": {"blocks": None, "ratio": 0.05}}),
    ("streaming local=4", "streaming", {"mask": {"local_blocks": 4}}),
    # round 3
    ("proxyattn gamma=0.99 min=256", "proxyattn", {"budget": {"gamma": 0.99, "min_budget": 256}}),
    ("vertical_slash ratio=0.2", "vertical_slash", {"budget": {"blocks": None, "ratio": 0.2}}),
    ("block_topk ratio=0.2", "block_topk", {"budget": {"blocks": None, "ratio": 0.2}}),
    ("streaming local=16", "streaming", {"mask": {"local_blocks": 16}}),
]
#: CPU smoke test: one budget per preset, small enough to be sparse at a few hundred tokens.
GRID_TINY: list[tuple[str, str, dict[str, Any]]] = [
    ("proxyattn gamma=0.9 min=0", "proxyattn", {"budget": {"gamma": 0.9, "min_budget": 0}}),
    ("xattention gamma=0.9", "xattention", {}),
    ("flexprefill gamma=0.9 min=0", "flexprefill", {"budget": {"gamma": 0.9, "min_budget": 0}}),
    ("vertical_slash ratio=0.3", "vertical_slash", {"budget": {"blocks": None, "ratio": 0.3}}),
    ("block_topk ratio=0.3", "block_topk", {"budget": {"blocks": None, "ratio": 0.3}}),
    ("streaming local=2", "streaming", {"mask": {"local_blocks": 2}}),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parent / "model")
    p.add_argument("--out", type=Path, default=Path("retrieval_lm_eval.json"))
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: short lengths, few prompts, tiny grid")
    p.add_argument("--lengths", type=str, default=None, help="dense lengths (default 2048,4096,8192,16384)")
    p.add_argument("--sparse-lengths", type=str, default=None, help="default 4096,8192,16384")
    p.add_argument("--prompts", type=int, default=None, help="dense prompts per length (default 200)")
    p.add_argument("--sparse-prompts", type=int, default=None, help="prompts per length and strategy (default 100)")
    p.add_argument("--n-pairs", type=int, default=32, help="key-value pairs per prompt (capped for short prompts)")
    p.add_argument("--grid", choices=["full", "defaults", "tiny"], default=None)
    p.add_argument("--only", type=str, default=None, help="comma-separated presets to keep from the grid")
    p.add_argument("--block", type=int, default=None, help="block_q = block_k for every strategy (default: presets')")
    p.add_argument("--kernel", type=str, default=None, help="override the kernel (default: each preset's 'auto')")
    p.add_argument("--analysis-length", type=int, default=None, help="default 4096 (tiny: 256)")
    p.add_argument("--analysis-prompts", type=int, default=4)
    p.add_argument("--batch-tokens", type=int, default=1 << 17, help="prompts per forward = batch_tokens // length")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    p.add_argument("--device", type=str, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="stop starting new work after this")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume-from", type=Path, default=None,
                   help="an earlier eval.json of the same model and settings: keep its finished units, run the rest")
    args = p.parse_args(argv)
    t = args.tiny
    args.lengths = [int(x) for x in (args.lengths or ("256,512" if t else "2048,4096,8192,16384")).split(",")]
    args.sparse_lengths = [int(x) for x in (args.sparse_lengths or ("512" if t else "4096,8192,16384")).split(",")]
    args.prompts = args.prompts or (8 if t else 200)
    args.sparse_prompts = args.sparse_prompts or (8 if t else 100)
    args.grid = args.grid or ("tiny" if t else "full")
    args.analysis_length = args.analysis_length or (256 if t else 4096)
    if t and args.block is None:
        args.block = 32
    return args


# ------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    import sparsekit

    env: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(), "host": platform.node(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__,
                           "sparsekit": getattr(sparsekit, "__version__", "?"), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            import triton
            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    else:
        env["cpu"] = platform.processor() or platform.machine()
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                           cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git on the device is fine
        env["git_commit"] = None
    return env


def load_model(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", local_files_only=True)
    return model.to(device).eval()


def model_meta(path: Path) -> dict[str, Any]:
    f = path / "retrieval_lm.json"
    return json.loads(f.read_text()) if f.exists() else {}


# ------------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, ids: torch.Tensor, value_len: int) -> torch.Tensor:
    """Greedy answer tokens ``[B, value_len]`` after ``ids``: one forward (prefill) for the first token; further
    tokens with the KV cache (decoding runs SDPA under sparsekit, like generate())."""
    if value_len == 1:
        return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)[:, None]
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1)
    toks = [nxt]
    past = out.past_key_values
    for _ in range(value_len - 1):
        out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        toks.append(nxt)
    return torch.stack(toks, 1)


def _depth_buckets(depth: torch.Tensor, ok: torch.Tensor, n: int = 5) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        lo, hi = i / n, (i + 1) / n
        sel = (depth >= lo) & ((depth < hi) if i < n - 1 else (depth <= hi))
        k = int(sel.sum())
        out.append({"depth": [round(lo, 2), round(hi, 2)], "n": k,
                    "accuracy": float(ok[sel].float().mean()) if k else None})
    return out


def run_prompts(model, prompts: dict[str, torch.Tensor], device: torch.device, batch_tokens: int,
                sparse: bool = False) -> dict[str, Any]:
    import sparsekit.hf as skhf

    ids, ans = prompts["input_ids"], prompts["answers"]
    n, L = ids.shape
    bs = max(1, batch_tokens // L)
    oks = []
    layer_density: dict[int, list[float]] = {}
    head_density: dict[int, list[torch.Tensor]] = {}
    routes: dict[str, int] = {}
    kernels: set[str] = set()
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        if sparse:
            skhf.reset_stats(model)
        pred = predict(model, ids[i:i + bs].to(device), ans.shape[1]).cpu()
        oks.append((pred == ans[i:i + bs]).all(1))
        if sparse:
            for rec in skhf.stats(model):
                if rec.get("q_len", 0) <= 1:
                    continue
                key = rec["route"] if rec["route"] == "sparse" else f"sdpa ({rec['reason']})"
                routes[key] = routes.get(key, 0) + 1
                if rec["route"] != "sparse" or "density" not in rec:
                    continue
                layer_density.setdefault(rec["layer"], []).append(float(rec["density"]))
                head_density.setdefault(rec["layer"], []).append(torch.tensor(rec["density_per_head"]).mean(0))
                kernels.add(rec.get("kernel", "?"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    ok = torch.cat(oks)
    res: dict[str, Any] = {"n": n, "accuracy": float(ok.float().mean()), "correct": int(ok.sum()),
                           "ok": [int(x) for x in ok],
                           "seconds": time.perf_counter() - t0, "by_depth": _depth_buckets(prompts["depth"], ok)}
    if sparse:
        per_layer = {str(k): sum(v) / len(v) for k, v in sorted(layer_density.items())}
        res["density"] = sum(per_layer.values()) / len(per_layer) if per_layer else None
        res["density_per_layer"] = per_layer
        res["density_per_head"] = {str(k): [round(float(x), 4) for x in torch.stack(v).mean(0)]
                                   for k, v in sorted(head_density.items())}
        res["routes"] = routes
        res["kernels"] = sorted(kernels)
    return res


# ------------------------------------------------------------------------------------------------
# head analysis: block-level attention mass captured through AttentionInterface
# ------------------------------------------------------------------------------------------------
class Capture:
    """Accumulates, per layer, the block-mass maps ``[B, Hq, nQb, nKb]`` and the last row's probabilities."""

    def __init__(self, block_q: int, block_k: int, chunk: int = 256) -> None:
        self.block_q, self.block_k, self.chunk = block_q, block_k, chunk
        self.mass: dict[int, torch.Tensor] = {}
        self.last_row: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                        **kwargs)
        if query.shape[2] > 1:
            self._record(getattr(module, "layer_idx", -1), query, key, scaling)
        return out, None

    def _record(self, layer: int, q: torch.Tensor, k: torch.Tensor, scaling: float | None) -> None:
        B, Hq, N, Dh = q.shape
        Hkv = k.shape[1]
        if k.shape[2] != N:
            raise ValueError("capture expects a fresh prefill (q_len == kv_len)")
        scale = scaling if scaling is not None else Dh ** -0.5
        bq, bk = self.block_q, self.block_k
        nQb, nKb = -(-N // bq), -(-N // bk)
        kr = k.float().repeat_interleave(Hq // Hkv, dim=1)
        mass = torch.zeros(B, Hq, nQb, nKb, dtype=torch.float64, device=q.device)
        rows_per_qb = torch.zeros(nQb, dtype=torch.float64, device=q.device)
        keys = torch.arange(N, device=q.device)
        for r0 in range(0, N, self.chunk):
            r1 = min(N, r0 + self.chunk)
            s = torch.einsum("bhqd,bhkd->bhqk", q[:, :, r0:r1].float(), kr) * scale
            s.masked_fill_(keys[None, :] > torch.arange(r0, r1, device=q.device)[:, None], float("-inf"))
            p = s.softmax(-1)
            if r1 == N:
                self.last_row[layer] = p[:, :, -1].cpu()
            p = torch.nn.functional.pad(p, (0, nKb * bk - N)).view(B, Hq, r1 - r0, nKb, bk).sum(-1)
            qb = torch.arange(r0, r1, device=q.device) // bq
            mass.index_add_(2, qb, p.double())
            rows_per_qb.index_add_(0, qb, torch.ones(r1 - r0, dtype=torch.float64, device=q.device))
        self.mass[layer] = (mass / rows_per_qb[None, None, :, None]).float().cpu()


def _js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits along the last dim (0 = identical, 1 = disjoint)."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        terms = a * (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log())
        return torch.where(a > 0, terms, torch.zeros_like(a)).sum(-1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)) / math.log(2)


def _keep_sets(mass: torch.Tensor, gamma: float) -> torch.Tensor:
    """Bool ``[..., nQb, nKb]``: the fewest blocks of each row holding ``gamma`` of its mass."""
    val, idx = mass.sort(-1, descending=True)
    csum = val.cumsum(-1)
    count = (csum < gamma * csum[..., -1:]).sum(-1, keepdim=True) + 1
    keep_sorted = torch.arange(mass.shape[-1]) < count
    return torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)


def analyse_heads(cap: Capture, prompts: dict[str, torch.Tensor], n_kv: int, value_len: int,
                  echo: bool = False, fused: bool = False) -> dict[str, Any]:
    """Per layer: similarity of the heads of each KV group (and across groups), per-head oracle densities and
    answer-row masses. Q-block 0 (one visible block) is left out of the similarity averages."""
    ids = prompts["input_ids"]
    B, N = ids.shape
    W = D.pair_width(value_len, echo, fused)
    # the needle pair of each prompt: the SEP position of the queried key's pair (make_prompts' "needle")
    needle = [int(x) for x in prompts["needle"]]
    out_layers = []
    for layer in sorted(cap.mass):
        M = cap.mass[layer]  # [B, Hq, nQb, nKb]
        Hq, nQb, nKb = M.shape[1], M.shape[2], M.shape[3]
        grp = Hq // n_kv
        bq, bk = cap.block_q, cap.block_k
        visible = torch.tensor([min(nKb, ((i + 1) * bq - 1) // bk + 1) for i in range(nQb)])
        rows = slice(1, None) if nQb > 1 else slice(0, None)
        Mr = M[:, :, rows]
        keep90 = _keep_sets(Mr, 0.9)
        pairs_in, pairs_out = [], []
        for a, b in itertools.combinations(range(Hq), 2):
            js = float(_js_bits(Mr[:, a], Mr[:, b]).mean())
            cos = float(torch.nn.functional.cosine_similarity(M[:, a].flatten(1), M[:, b].flatten(1), dim=1).mean())
            inter = (keep90[:, a] & keep90[:, b]).sum(-1).float()
            union = (keep90[:, a] | keep90[:, b]).sum(-1).float()
            jac = float((inter / union.clamp_min(1)).mean())
            rec = {"heads": [a, b], "js_bits": js, "cosine": cos, "jaccard90": jac}
            (pairs_in if a // grp == b // grp else pairs_out).append(rec)
        oracle = {}
        for gamma in GAMMAS:
            kept = _keep_sets(M, gamma).sum(-1).float()  # [B, Hq, nQb]
            oracle[str(gamma)] = [round(float(x), 4) for x in (kept.sum(-1) / visible.sum()).mean(0)]
        last = cap.last_row[layer]  # [B, Hq, N]
        needle_mass = torch.stack([last[b, :, needle[b]:needle[b] + W].sum(-1) for b in range(B)]).mean(0)
        sink_mass = last[:, :, :bk].sum(-1).mean(0)
        groups = []
        for g in range(n_kv):
            heads = list(range(g * grp, (g + 1) * grp))
            inside = [r for r in pairs_in if r["heads"][0] in heads]
            od = {k: [v[h] for h in heads] for k, v in oracle.items()}
            groups.append({
                "kv_head": g, "heads": heads,
                "js_bits_mean": _mean(r["js_bits"] for r in inside),
                "cosine_mean": _mean(r["cosine"] for r in inside),
                "jaccard90_mean": _mean(r["jaccard90"] for r in inside),
                "oracle_density": od,
                "oracle_density_spread": {k: max(v) - min(v) for k, v in od.items()},
                "oracle_density_max_over_min": {k: max(v) / max(min(v), 1e-9) for k, v in od.items()},
            })
        out_layers.append({
            "layer": layer,
            "within_group": {"js_bits": _mean(r["js_bits"] for r in pairs_in),
                             "cosine": _mean(r["cosine"] for r in pairs_in),
                             "jaccard90": _mean(r["jaccard90"] for r in pairs_in)},
            "across_groups": {"js_bits": _mean(r["js_bits"] for r in pairs_out),
                              "cosine": _mean(r["cosine"] for r in pairs_out),
                              "jaccard90": _mean(r["jaccard90"] for r in pairs_out)},
            "groups": groups,
            "oracle_density_per_head": oracle,
            "answer_row_needle_mass_per_head": [round(float(x), 4) for x in needle_mass],
            "answer_row_sink_mass_per_head": [round(float(x), 4) for x in sink_mass],
            "pairs": pairs_in + pairs_out,
        })
    return {"length": N, "prompts": B, "block_q": cap.block_q, "block_k": cap.block_k, "layers": out_layers}


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else None


def run_analysis(model, prompts: dict[str, torch.Tensor], device: torch.device, block: int,
                 value_len: int, echo: bool = False, fused: bool = False) -> dict[str, Any]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    current: list[Capture] = []
    AttentionInterface.register(CAPTURE, lambda *a, **kw: current[-1](*a, **kw))
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)
    prev = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE)
    masses: dict[int, list[torch.Tensor]] = {}
    rows: dict[int, list[torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for i in range(prompts["input_ids"].shape[0]):  # one prompt at a time: memory stays O(rows x N)
                cap = Capture(block, block)
                current[:] = [cap]
                model(input_ids=prompts["input_ids"][i:i + 1].to(device), use_cache=False, logits_to_keep=1)
                for layer in cap.mass:
                    masses.setdefault(layer, []).append(cap.mass[layer])
                    rows.setdefault(layer, []).append(cap.last_row[layer])
    finally:
        model.set_attn_implementation(prev)
    cap = Capture(block, block)
    cap.mass = {k: torch.cat(v) for k, v in masses.items()}
    cap.last_row = {k: torch.cat(v) for k, v in rows.items()}
    return analyse_heads(cap, prompts, model.config.num_key_value_heads, value_len, echo, fused)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def print_tables(res: dict[str, Any]) -> None:
    lengths = [str(x) for x in res["settings"]["sparse_lengths"]]
    print("\ndense exact-match accuracy:")
    for L, r in res["dense"].items():
        print(f"  {L:>6}: {r['accuracy']:.3f} ({r['correct']}/{r['n']})  {r['seconds']:.1f}s")
    if res["sparse"]:
        w = max(len(r["label"]) for r in res["sparse"]) + 2
        print("\naccuracy / density (kept / causal blocks, mean over layers)")
        print(" " * w + "".join(f"{L:>17}" for L in lengths))
        print(f"{'dense':<{w}}" + "".join(f"{res['dense'][L]['accuracy']:>10.3f} / 1.00" if L in res["dense"]
                                         else f"{'-':>17}" for L in lengths))
        for r in res["sparse"]:
            cells = []
            for L in lengths:
                c = r["results"].get(L)
                if c is None or "accuracy" not in c:
                    cells.append(f"{'skipped':>17}" if c is None or c.get("skipped") else f"{'error':>17}")
                else:
                    d = c.get("density")
                    dens = f"{d:.2f}" if d is not None else " -  "
                    cells.append(f"{c['accuracy']:>10.3f} / {dens}")
            print(f"{r['label']:<{w}}" + "".join(cells))
    an = res.get("analysis")
    if an and "layers" in an:
        print(f"\nheads of one KV group (dense, {an['length']} tokens, {an['prompts']} prompts, blocks "
              f"{an['block_q']}): JS divergence (bits) / cosine / Jaccard of the 90%-mass blocks, within vs across "
              "groups; oracle density at gamma 0.95 per head; answer-row mass on the needle per head")
        for lay in an["layers"]:
            wi, ac = lay["within_group"], lay["across_groups"]
            fmt = lambda d: ("-" if d["js_bits"] is None else  # noqa: E731
                             f"{d['js_bits']:.3f}/{d['cosine']:.3f}/{d['jaccard90']:.2f}")
            dens = " ".join(f"{x:.2f}" for x in lay["oracle_density_per_head"]["0.95"])
            needle = " ".join(f"{x:.2f}" for x in lay["answer_row_needle_mass_per_head"])
            print(f"  layer {lay['layer']}: within {fmt(wi)}  across {fmt(ac)}  density@.95 [{dens}]  "
                  f"needle [{needle}]")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    import sparsekit.hf as skhf

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    meta = model_meta(args.model)
    value_len = int(meta.get("value_len", 1))
    # the task format the model was trained on
    fmt = D.prompt_format(meta)
    fmt_json = {k: (v.to_dict() if k == "vocab" else v) for k, v in fmt.items()}
    echo = fmt["echo"]
    model = load_model(args.model, device, dtype)
    grid = {"full": GRID_FULL, "tiny": GRID_TINY, "defaults": GRID_FULL[:6]}[args.grid]
    if args.only:
        keep = set(args.only.split(","))
        grid = [g for g in grid if g[1] in keep]
    sf = list(args.model.glob("*.safetensors"))
    res: dict[str, Any] = {
        "environment": environment(device),
        "model": {"path": str(args.model), "dtype": str(dtype).replace("torch.", ""),
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "safetensors_bytes": sum(f.stat().st_size for f in sf), "config": model.config.to_dict(),
                  "training": meta},
        "settings": {"lengths": args.lengths, "sparse_lengths": args.sparse_lengths, "prompts": args.prompts,
                     "sparse_prompts": args.sparse_prompts, "n_pairs": args.n_pairs, "value_len": value_len, **fmt_json,
                     "grid": args.grid, "block": args.block, "kernel": args.kernel, "batch_tokens": args.batch_tokens,
                     "prompt_seed": f"data.make_prompts: prompt i of a length is seeded EVAL_SEED_BASE + length * 1000 "
                                    f"+ i, EVAL_SEED_BASE = {D.EVAL_SEED_BASE}", "max_minutes": args.max_minutes},
        "dense": {}, "analysis": None, "sparse": [], "skipped": [],
    }

    def out_of_time() -> bool:
        return args.max_minutes is not None and (time.perf_counter() - t_start) > args.max_minutes * 60

    def save() -> None:
        res["wall_seconds"] = time.perf_counter() - t_start
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=str))

    prev: dict[str, Any] = {}
    if args.resume_from is not None and args.resume_from.exists():
        prev = json.loads(args.resume_from.read_text())
        same = all(prev.get("settings", {}).get(k) == res["settings"][k]
                   for k in ("prompts", "sparse_prompts", "n_pairs", "value_len", "block", "kernel"))
        if not same:
            print(f"--resume-from {args.resume_from}: other settings, not reused", flush=True)
            prev = {}
        else:
            res["previous_environment"] = prev.get("environment")
            print(f"--resume-from {args.resume_from}: reusing its finished units", flush=True)
    prev_sparse = {e["label"]: e for e in prev.get("sparse", []) if "error" not in e}

    prompts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def get_prompts(L: int, n: int) -> dict[str, torch.Tensor]:
        if (L, n) not in prompts:
            prompts[(L, n)] = D.make_prompts(n, L, n_pairs=args.n_pairs, value_len=value_len, **fmt)
        return prompts[(L, n)]

    # 1. dense
    for L in args.lengths:
        if str(L) in prev.get("dense", {}):
            res["dense"][str(L)] = prev["dense"][str(L)]
            continue
        if out_of_time():
            res["skipped"].append(f"dense {L}")
            continue
        r = run_prompts(model, get_prompts(L, args.prompts), device, args.batch_tokens)
        r["n_pairs"] = int(get_prompts(L, args.prompts)["n_pairs"])
        res["dense"][str(L)] = r
        print(f"dense {L}: accuracy {r['accuracy']:.3f} ({r['correct']}/{r['n']}), {r['seconds']:.1f}s", flush=True)
        save()
    # 2. head analysis
    block = args.block or 128
    if prev.get("analysis") and "layers" in prev["analysis"]:
        res["analysis"] = prev["analysis"]
    elif out_of_time():
        res["skipped"].append("analysis")
    else:
        t0 = time.perf_counter()
        try:
            ap = D.make_prompts(args.analysis_prompts, args.analysis_length, n_pairs=args.n_pairs, value_len=value_len, **fmt,
                                seed=D.EVAL_SEED_BASE + args.analysis_length * 1000 + 500)
            res["analysis"] = run_analysis(model, ap, device, block, value_len, echo, fmt["vocab"].fused)
            res["analysis"]["seconds"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - record and go on with the strategies
            res["analysis"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"head analysis: {time.perf_counter() - t0:.1f}s", flush=True)
        save()
    # 3. strategies
    for label, preset, options in grid:
        opts = dict(options)
        if args.block:
            opts.update(block_q=args.block, block_k=args.block)
        if args.kernel:
            opts["kernel"] = args.kernel
        entry: dict[str, Any] = {"label": label, "preset": preset, "options": opts, "results": {}}
        res["sparse"].append(entry)
        old = prev_sparse.get(label, {}).get("results", {})
        for L in args.sparse_lengths:
            if "accuracy" in old.get(str(L), {}):
                entry["results"][str(L)] = old[str(L)]
        if len(entry["results"]) == len(args.sparse_lengths):
            entry["pipeline"] = prev_sparse[label].get("pipeline")
            continue
        try:
            skhf.enable(model, preset, min_seq_len=0, **opts)
            entry["pipeline"] = skhf.settings(model).pipeline(None).name
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{label}: cannot enable: {entry['error']}", flush=True)
            save()
            continue
        try:
            for L in args.sparse_lengths:
                if str(L) in entry["results"]:
                    continue
                if out_of_time():
                    entry["results"][str(L)] = {"skipped": True}
                    res["skipped"].append(f"{label} {L}")
                    continue
                try:
                    r = run_prompts(model, get_prompts(L, args.sparse_prompts), device, args.batch_tokens, sparse=True)
                except Exception as exc:  # noqa: BLE001
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                entry["results"][str(L)] = r
                if "accuracy" in r:
                    d = r["density"]
                    dens = "-" if d is None else f"{d:.3f}"
                    print(f"{label} {L}: accuracy {r['accuracy']:.3f}, density {dens}, {r['seconds']:.1f}s, "
                          f"kernels {r['kernels']}", flush=True)
                else:
                    print(f"{label} {L}: {r['error']}", flush=True)
                save()
        finally:
            skhf.disable(model)
    # dense accuracy on the prompts the strategies saw (prompt i does not depend on n: a prefix of the dense set)
    res["dense_on_sparse_prompts"] = {}
    for L in args.sparse_lengths:
        d = res["dense"].get(str(L))
        if d is not None and d["n"] >= args.sparse_prompts:
            res["dense_on_sparse_prompts"][str(L)] = float(torch.tensor(d["ok"][:args.sparse_prompts]).float().mean())
        elif not out_of_time():
            r = run_prompts(model, get_prompts(L, args.sparse_prompts), device, args.batch_tokens)
            res["dense_on_sparse_prompts"][str(L)] = r["accuracy"]
    save()
    print_tables(res)
    print(f"\nwrote {args.out} ({time.perf_counter() - t_start:.1f}s)", flush=True)
    return res


if __name__ == "__main__":
    main()
