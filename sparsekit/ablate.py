"""``sparsekit ablate``: a grid of strategies x parameters x workloads x lengths, judged against dense attention.

An ablation is a config file (TOML) or dict, never a fork of the code::

    lengths = [4096]
    [[strategy]]
    name = "proxyattn"
    preset = "proxyattn"
    budget = { gamma = [0.9, 0.95] }      # lists expand into a grid
    [[workload]]
    name = "synthetic"
    heads = 8
    kv_heads = 2
    seed = [0, 1]

For every cell (strategy grid point x workload grid point x length) it plans and attends, computes the dense
reference once per workload cell (shared by all strategies), and records density, attention recall, output
relative error, per-head statistics and timings. Rows are appended to ``results.jsonl`` and ``results.csv`` in
the output folder as they finish; a rerun skips cells whose key (a stable hash of the cell's configuration) is
already there. At the end: a summary table and plots. Reference: ``docs/ablation.md``.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import itertools
import json
import math
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import attrs
import torch
from torch import Tensor

from .errors import ConfigError, SparsekitError
from .metrics import attention_recall_per_head, relative_error, relative_error_per_head, time_ms
from .workloads import SyntheticWorkload

TOP_KEYS = {
    "out": "output folder (default runs/<config name>)",
    "lengths": "list of sequence lengths (tokens)",
    "repeats": "timed calls per measurement, median reported (default 1)",
    "warmup": "untimed calls before timing (default: 1 on CUDA, 0 on CPU)",
    "device": "'auto' (default), 'cpu', 'cuda', 'cuda:1', ...",
    "dtype": "'auto' (default: bfloat16 on CUDA, float32 elsewhere), 'float32', 'bfloat16', 'float16', 'float64'",
    "dense": "dense reference: 'sdpa' (default, torch SDPA) or 'reference' (sparsekit.dense_attention, fp32, chunked)",
    "recall_rows": "query rows sampled per sequence for attention recall (default 256; 0 = all rows)",
    "heatmap_length": "length of the mask heatmaps (default: the smallest length, at most 8192)",
    "heatmap_head": "query head shown in the mask heatmaps (default 0)",
    "strategy": "[[strategy]] tables",
    "workload": "[[workload]] tables",
}
STRATEGY_KEYS = ("name", "preset", "estimator", "budget", "mask", "kernel", "block_q", "block_k", "check_finite",
                 "validate", "dense_above", "overlap_budget")
SYNTHETIC_KEYS = tuple(f.name for f in attrs.fields(SyntheticWorkload) if f.name != "n")
CAPTURED_KEYS = ("path", "layers")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
CSV_COLUMNS = [
    "key", "strategy", "params", "label", "kernel", "dense_fallback", "block_q", "block_k", "workload", "workload_kind", "seed", "layer",
    "length", "batch", "heads", "kv_heads", "head_dim", "device", "device_name", "dtype", "density", "recall",
    "rel_error", "budget_ratio_mean", "plan_ms", "estimate_ms", "budget_ms", "mask_ms", "attend_ms", "total_ms",
    "dense_ms", "speedup", "dense", "repeats", "timestamp",
]
RESULTS_JSONL, RESULTS_CSV, ENV_JSON = "results.jsonl", "results.csv", "env.json"
PLOTS = ("density_recall.png", "density_error.png", "head_budgets.png", "mask_heatmaps.png")


# --------------------------------------------------------------------------------------------- config
def _bad(key: str, value: Any, allowed: str, fix: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed (allowed: {allowed}). Fix: {fix}")


def _axes(d: dict[str, Any], where: str, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], list[Any]]]:
    for key, val in d.items():
        if isinstance(val, list):
            if not val:
                raise _bad(f"{where}.{'.'.join(prefix + (key,))}", val, "a value or a non-empty list of values",
                           "give at least one value")
            yield prefix + (key,), val
        elif isinstance(val, dict):
            yield from _axes(val, where, prefix + (key,))


def expand(entry: dict[str, Any], where: str = "entry") -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Cartesian grid of a table whose list values (at any depth) are axes.

    Returns ``(concrete table, {"dotted.path": value})`` per grid point, in row-major order. A list of lists
    is an axis whose values are lists (the way to pass a list-valued option).
    """
    axes = list(_axes(entry, where))
    out = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        concrete = copy.deepcopy(entry)
        for (path, _), val in zip(axes, combo):
            node = concrete
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = val
        out.append((concrete, {".".join(path): val for (path, _), val in zip(axes, combo)}))
    return out


def _params_text(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


@attrs.frozen
class StrategyCell:
    name: str
    params: dict[str, Any]
    attn: Any  # SparseAttention

    @property
    def label(self) -> str:
        blocks = (self.attn.block_q, self.attn.block_k)
        return self.attn.name + ("" if blocks == (128, 128) else f"@{blocks[0]}x{blocks[1]}")


@attrs.frozen
class WorkloadCell:
    name: str
    kind: str  # "synthetic" | "captured"
    params: dict[str, Any]  # synthetic: SyntheticWorkload knobs; captured: path, layer
    lengths: tuple[int, ...]
    identity: dict[str, Any]  # what enters the cell key

    def shape(self) -> dict[str, int]:
        if self.kind == "synthetic":
            w = SyntheticWorkload(n=1, **self.params)
            return {"batch": w.batch, "heads": w.heads, "kv_heads": w.kv_heads, "head_dim": w.head_dim}
        return dict(self.identity["shape"])

    @property
    def scale(self) -> float | None:
        """Softmax scale of a captured layer (``None``: ``1/sqrt(D)``)."""
        return self.identity.get("scale")

    def tensors(self, n: int, device: torch.device, dtype: torch.dtype, cache: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """``q [B, Hq, n, D]``, ``k, v [B, Hkv, n, D]`` (captured: the first ``n`` tokens)."""
        if self.kind == "synthetic":
            return SyntheticWorkload(n=n, **self.params).generate(dtype, device)
        q, k, v = _captured_layer(self.params["path"], self.params["layer"], cache)
        return tuple(t[:, :, :n].to(device=device, dtype=dtype).contiguous() for t in (q, k, v))  # type: ignore[return-value]


@attrs.frozen
class Ablation:
    """A validated configuration: settings, strategy cells and workload cells."""

    settings: dict[str, Any]
    strategies: list[StrategyCell]
    workloads: list[WorkloadCell]
    source: str

    def cells(self) -> list[tuple[WorkloadCell, int, StrategyCell]]:
        """Every (workload cell, length, strategy cell), workload-major so dense references are shared."""
        return [(w, n, s) for w in self.workloads for n in w.lengths for s in self.strategies]

    def key(self, w: WorkloadCell, n: int, s: StrategyCell) -> str:
        st = self.settings
        ident = {"strategy": s.name, "pipeline": s.attn.config, "workload": w.identity, "length": n,
                 "device": torch.device(st["device"]).type, "dtype": st["dtype"], "dense": st["dense"],
                 "recall_rows": st["recall_rows"], "repeats": st["repeats"], "warmup": st["warmup"]}
        return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _positive_int(key: str, value: Any, fix: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"an integer >= {minimum}", fix)
    return value


def _lengths(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad(key, value, "a non-empty list of positive integers", f"e.g. {key.split('.')[-1]} = [4096, 8192]")
    return tuple(_positive_int(key, v, f"e.g. {key.split('.')[-1]} = [4096, 8192]") for v in value)


def load(config: str | Path | dict[str, Any], *, device: str | None = None, dtype: str | None = None,
         registry: Any = None) -> Ablation:
    """Read and check an ablation config (TOML path or dict): every strategy is built and every workload checked
    before anything runs; a bad entry raises :class:`ConfigError` naming the key, the value, what is allowed and
    the fix."""
    from .build import build

    base = Path.cwd()
    if isinstance(config, dict):
        data, source = copy.deepcopy(config), "ablation"
    else:
        path = Path(config)
        if not path.is_file():
            raise _bad("config", str(path), "a TOML file or a dict", "check the path")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config={str(path)!r} is not valid TOML ({exc}). Fix: correct the file") from None
        source, base = path.stem, path.resolve().parent
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"unknown ablation key(s) {unknown} (allowed: {', '.join(TOP_KEYS)}). Fix: remove or rename "
                          "them (stage options go inside a [[strategy]] table, workload knobs inside [[workload]])")
    if "lengths" not in data:
        raise ConfigError("the ablation has no 'lengths' (allowed: a non-empty list of positive integers). "
                          "Fix: add e.g. lengths = [4096]")
    st: dict[str, Any] = {"lengths": _lengths("lengths", data["lengths"])}
    st["repeats"] = _positive_int("repeats", data.get("repeats", 1), "e.g. repeats = 3")
    dev = device or data.get("device", "auto")
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(dev)
    except (RuntimeError, TypeError):
        raise _bad("device", dev, "'auto', 'cpu', 'cuda', 'cuda:N', ...", "e.g. device = 'cpu'") from None
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        raise _bad("device", dev, "'cpu' here (no CUDA device is visible)", "pass --device cpu or device = 'auto'")
    st["device"] = str(dev)
    gpu = torch.device(dev).type == "cuda"
    warm = data.get("warmup", 1 if gpu else 0)
    st["warmup"] = _positive_int("warmup", warm, "e.g. warmup = 1", minimum=0)
    dt = dtype or data.get("dtype", "auto")
    if dt == "auto":
        dt = "bfloat16" if gpu else "float32"
    if dt not in DTYPES:
        raise _bad("dtype", dt, f"'auto', {', '.join(repr(d) for d in DTYPES)}", "e.g. dtype = 'bfloat16'")
    st["dtype"] = dt
    st["dense"] = data.get("dense", "sdpa")
    if st["dense"] not in ("sdpa", "reference"):
        raise _bad("dense", st["dense"], "'sdpa', 'reference'", "dense = 'sdpa'")
    rows = _positive_int("recall_rows", data.get("recall_rows", 256), "e.g. recall_rows = 256", minimum=0)
    st["recall_rows"] = rows
    st["heatmap_length"] = _positive_int("heatmap_length", data.get("heatmap_length", min(min(st["lengths"]), 8192)),
                                         "e.g. heatmap_length = 4096")
    st["heatmap_head"] = _positive_int("heatmap_head", data.get("heatmap_head", 0), "e.g. heatmap_head = 0", minimum=0)
    st["out"] = data.get("out")
    if st["out"] is not None and not isinstance(st["out"], str):
        raise _bad("out", st["out"], "a folder path string", "e.g. out = 'runs/gamma'")

    strategies = _strategies(data.get("strategy"), build, registry)
    workloads = _workloads(data.get("workload"), st["lengths"], base)
    return Ablation(st, strategies, workloads, source)


def _tables(value: Any, key: str, example: str) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise _bad(key, value, f"one or more [[{key}]] tables", f"add e.g. [[{key}]] {example}")
    return value


def _strategies(value: Any, build: Any, registry: Any) -> list[StrategyCell]:
    out = []
    for i, entry in enumerate(_tables(value, "strategy", "name = 'proxyattn', preset = 'proxyattn'")):
        where = f"strategy[{i}]"
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name", name, "a non-empty string (the row label of this strategy family)",
                       f"add name = '{entry.get('preset', 'my-strategy')}'")
        where = f"strategy[{i}] ({name!r})"
        unknown = [k for k in entry if k not in STRATEGY_KEYS]
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown} (allowed: {', '.join(STRATEGY_KEYS)}). Fix: put "
                              "stage options inside the stage, e.g. budget = { gamma = 0.9 }")
        if not any(k in entry for k in ("preset", "estimator", "budget", "mask")):
            raise ConfigError(f"{where} names no preset or stage (allowed keys: {', '.join(STRATEGY_KEYS[1:])}). "
                              "Fix: add e.g. preset = 'proxyattn'")
        body = {k: v for k, v in entry.items() if k != "name"}
        for concrete, params in expand(body, where):
            kwargs = {k: v for k, v in concrete.items() if k != "preset"}
            try:
                attn = build(concrete.get("preset"), registry=registry, **kwargs)
            except SparsekitError as exc:
                shown = f" with {_params_text(params)}" if params else ""
                raise type(exc)(f"{where}{shown}: {exc}") from None
            out.append(StrategyCell(name, params, attn))
    return out


def _workloads(value: Any, lengths: tuple[int, ...], base: Path) -> list[WorkloadCell]:
    out = []
    for i, entry in enumerate(_tables(value, "workload", "name = 'synthetic', heads = 8, kv_heads = 2")):
        name = entry.get("name")
        where = f"workload[{i}]"
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name", name, "a non-empty string (the workload's label)", "add name = 'synthetic'")
        where = f"workload[{i}] ({name!r})"
        kind = entry.get("kind", "captured" if "path" in entry else "synthetic")
        if kind not in ("synthetic", "captured"):
            raise _bad(f"{where}.kind", kind, "'synthetic', 'captured'", "kind = 'synthetic', or give path = ... for a "
                       "captured Q/K/V file")
        wl = _lengths(f"{where}.lengths", entry["lengths"]) if "lengths" in entry else lengths
        body = {k: v for k, v in entry.items() if k not in ("name", "kind", "lengths")}
        allowed = SYNTHETIC_KEYS if kind == "synthetic" else CAPTURED_KEYS
        unknown = [k for k in body if k not in allowed]
        if unknown:
            raise ConfigError(f"{where} ({kind}) has unknown key(s) {unknown} (allowed: name, kind, lengths, "
                              f"{', '.join(allowed)}). Fix: remove or rename them")
        if kind == "synthetic":
            for concrete, _ in expand(body, where):
                out.append(_synthetic_cell(name, concrete, wl, where))
        else:
            out.extend(_captured_cells(name, body, wl, where, base))
    return out


def _synthetic_cell(name: str, params: dict[str, Any], lengths: tuple[int, ...], where: str) -> WorkloadCell:
    fields = attrs.fields_dict(SyntheticWorkload)
    for key, val in params.items():
        default = fields[key].default
        if isinstance(default, tuple):  # sharpness: a (low, high) pair
            if not (isinstance(val, list) and len(val) == 2 and all(isinstance(x, (int, float)) for x in val)):
                raise _bad(f"{where}.{key}", val, "a [low, high] pair, wrapped in a list in the grid",
                           f"{key} = [{list(default)}]")
            params[key] = tuple(val)
        elif isinstance(default, int):
            low = 0 if key in ("vertical_tokens", "needles", "seed") else 1
            _positive_int(f"{where}.{key}", val, f"e.g. {key} = {default}", minimum=low)
        elif isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0:
            raise _bad(f"{where}.{key}", val, "a non-negative number", f"e.g. {key} = {default}")
    try:
        w = SyntheticWorkload(n=1, **params)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}. Fix: check the knob values") from None
    if w.heads % w.kv_heads:
        raise _bad(f"{where}.heads", w.heads, f"a multiple of kv_heads={w.kv_heads}", "make heads % kv_heads == 0")
    if w.head_dim < 8:
        raise _bad(f"{where}.head_dim", w.head_dim, "at least 8", "e.g. head_dim = 64")
    ident = {"kind": "synthetic", **{k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(w).items() if k != "n"}}
    return WorkloadCell(name, "synthetic", params, lengths, ident)


def _captured_cells(name: str, body: dict[str, Any], lengths: tuple[int, ...], where: str,
                    base: Path) -> list[WorkloadCell]:
    raw = body.get("path")
    if not isinstance(raw, str) or not raw:
        raise _bad(f"{where}.path", raw, "a .safetensors file with keys layer{i}.q/.k/.v",
                   "capture one with sparsekit.capture, then path = 'qkv.safetensors'")
    candidates = [Path(raw)] if Path(raw).is_absolute() else [base / raw, Path.cwd() / raw]
    path = next((p.resolve() for p in candidates if p.is_file()), None)
    if path is None:
        raise _bad(f"{where}.path", raw, f"an existing file (looked in {', '.join(str(p.parent) for p in candidates)})",
                   "give the path relative to the config file or the current folder")
    shapes, info = _captured_shapes(path, where)
    layers = body.get("layers", sorted(shapes))
    layers = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if not isinstance(layers, list) or not layers:
        raise _bad(f"{where}.layers", layers, f"a layer index or a non-empty list of them ({sorted(shapes)})",
                   f"e.g. layers = [{min(shapes)}]")
    cells = []
    for layer in layers:
        if layer not in shapes:
            raise _bad(f"{where}.layers", layer, f"the layers in {path.name}: {sorted(shapes)}",
                       f"pick from {sorted(shapes)}")
        qs, ks = shapes[layer]
        too_long = [n for n in lengths if n > qs[2]]
        if too_long:
            raise _bad(f"{where}.lengths", list(lengths), f"lengths <= {qs[2]} (the captured tokens of layer {layer})",
                       f"give the workload its own lengths = [{min(qs[2], 4096)}] or capture a longer prompt")
        shape = {"batch": qs[0], "heads": qs[1], "kv_heads": ks[1], "head_dim": qs[3]}
        layer_info = info.get(str(layer), {})
        # the softmax scale the layer used (sparsekit.capture records it; default 1/sqrt(D))
        scale = layer_info.get("scaling")
        ident = {"kind": "captured", "path": str(path), "bytes": path.stat().st_size, "layer": layer, "shape": shape,
                 "tokens": qs[2], "scale": None if scale is None else float(scale),
                 **{k: layer_info[k] for k in ("sliding_window", "softcap") if layer_info.get(k) is not None}}
        cells.append(WorkloadCell(name, "captured", {"path": str(path), "layer": layer}, lengths, ident))
    return cells


def _captured_shapes(path: Path, where: str) -> tuple[dict[int, tuple[list[int], list[int]]], dict[str, Any]]:
    """Layer -> (q shape, k shape), and the per-layer ``layer_info`` metadata (scaling, ...) when the file has it,
    read from the safetensors header (no tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("layer_info", "{}"))
            keys = set(f.keys())
            layers = sorted({int(k[5:].split(".")[0]) for k in keys if k.startswith("layer") and k.endswith(".q")})
            out = {}
            for i in layers:
                if not {f"layer{i}.k", f"layer{i}.v"} <= keys:
                    raise _bad(f"{where}.path", str(path), f"a file with layer{i}.q, layer{i}.k and layer{i}.v",
                               "capture it again with sparsekit.capture")
                out[i] = (list(f.get_slice(f"layer{i}.q").get_shape()), list(f.get_slice(f"layer{i}.k").get_shape()))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 — safetensors raises several kinds
        raise _bad(f"{where}.path", str(path), "a readable .safetensors file", f"check the file ({exc})") from None
    if not out:
        raise _bad(f"{where}.path", str(path), "a file with keys layer{i}.q, layer{i}.k, layer{i}.v",
                   "capture one with sparsekit.capture")
    return out, info if isinstance(info, dict) else {}


def _read_qkv(path: str, layers: list[int] | None = None) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
    """Fallback reader of the capture format (``layer{i}.q/.k/.v``), loading only ``layers``."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="pt") as f:
        avail = sorted({int(k[5:].split(".")[0]) for k in f.keys() if k.startswith("layer") and k.endswith(".q")})
        for i in (avail if layers is None else layers):
            out[i] = (f.get_tensor(f"layer{i}.q"), f.get_tensor(f"layer{i}.k"), f.get_tensor(f"layer{i}.v"))
    return out


def _captured_layer(path: str, layer: int, cache: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """One captured layer. Through ``sparsekit.capture.load_qkv(path, layers=[i])`` when that module exists (one
    layer in memory at a time; a ``load_qkv`` without ``layers`` reads the whole file, once per path), else with
    the private reader :func:`_read_qkv`."""
    key = f"captured:{path}"
    if key not in cache:
        cache.clear()  # keep one file in memory at a time
        try:
            from .capture import load_qkv  # type: ignore[import-not-found]
        except ImportError:
            load_qkv = None
        if load_qkv is None:
            cache[key] = _LazyLayers(path)
        elif "layers" in inspect.signature(load_qkv).parameters:
            cache[key] = _LazyLayers(path, load_qkv)
        else:
            cache[key] = load_qkv(path)
    layers = cache[key]
    return layers[layer]


class _LazyLayers:
    """Loads a captured layer on first access (with ``load_qkv(path, layers=[i])`` or the fallback reader)."""

    def __init__(self, path: str, loader: Any = None) -> None:
        self.path, self.loader, self.layers = path, loader, {}

    def __getitem__(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        if layer not in self.layers:
            self.layers.clear()
            got = self.loader(self.path, layers=[layer]) if self.loader else _read_qkv(self.path, [layer])
            self.layers[layer] = got[layer]
        return self.layers[layer]


# --------------------------------------------------------------------------------------------- running
def _dense(q: Tensor, k: Tensor, v: Tensor, how: str, scale: float | None = None) -> Tensor:
    if how == "reference":
        from .reference import dense_attention

        return dense_attention(q, k, v, scale=scale)  # type: ignore[return-value]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                            enable_gqa=q.shape[1] != k.shape[1])


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _measure(abl: Ablation, w: WorkloadCell, n: int, s: StrategyCell, key: str, q: Tensor, k: Tensor, v: Tensor,
             ref: Tensor, dense_ms: float) -> dict[str, Any]:
    st = abl.settings
    dev = q.device
    reps, warm = st["repeats"], st["warmup"]
    attn = s.attn
    plan_ms, plan = time_ms(lambda: attn.plan(q, k, scale=w.scale), dev, repeats=reps, warmup=warm)
    attend_ms, out = time_ms(lambda: attn.run(plan, v), dev, repeats=reps, warmup=warm)
    # the kernel that ran: with dense_above reached, the dense one (density, recall stay the planned layout's)
    fallback = bool(plan.info.get("dense_fallback")) if attn.dense_above is not None else None
    kernel = plan.info["kernel_name"]
    rows = st["recall_rows"] or None
    recall_h = attention_recall_per_head(q, k, plan.layout, rows=rows, scale=plan.problem.scale)  # [B, Hq]
    density_h = plan.layout.density_per_head().double().cpu()
    err_h = relative_error_per_head(out, ref).cpu()
    ratio = None
    if plan.budget is not None and "ratio" in plan.budget.info:
        ratio = plan.budget.info["ratio"].double().reshape(plan.layout.B, -1).mean(0).cpu().tolist()
    shape = w.shape()
    return {
        "key": key, "strategy": s.name, "params": _params_text(s.params), "label": s.label, "kernel": kernel,
        "dense_fallback": fallback,
        "block_q": attn.block_q, "block_k": attn.block_k, "workload": w.name, "workload_kind": w.kind,
        "seed": w.params.get("seed", 0) if w.kind == "synthetic" else None,
        "layer": w.params.get("layer") if w.kind == "captured" else None, "length": n, **shape,
        "device": str(dev), "device_name": _device_name(dev), "dtype": st["dtype"],
        "density": plan.density, "recall": float(recall_h.mean()), "rel_error": relative_error(out, ref),
        "budget_ratio_mean": (sum(ratio) / len(ratio)) if ratio else None,
        "plan_ms": plan_ms, "estimate_ms": plan.timings.get("estimate"), "budget_ms": plan.timings.get("budget"),
        "mask_ms": plan.timings.get("mask"), "attend_ms": attend_ms, "total_ms": plan_ms + attend_ms,
        "dense_ms": dense_ms, "speedup": dense_ms / max(plan_ms + attend_ms, 1e-9), "dense": st["dense"],
        "repeats": reps, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # JSON only
        "per_head": {"density": density_h.mean(0).tolist(), "recall": recall_h.mean(0).tolist(),
                     "budget_ratio": ratio, "rel_error": err_h.mean(0).tolist()},
        "options": s.params, "pipeline": attn.config, "workload_config": w.identity,
    }


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run: that cell runs again
            if isinstance(row, dict) and "key" in row:
                done[row["key"]] = row
    return done


def _append(out: Path, row: dict[str, Any]) -> None:
    with (out / RESULTS_JSONL).open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    csv_path = out / RESULTS_CSV
    new = not csv_path.is_file() or csv_path.stat().st_size == 0
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in CSV_COLUMNS})


def _write_env(out: Path, abl: Ablation) -> None:
    import platform

    import sparsekit

    dev = torch.device(abl.settings["device"])
    env = {"sparsekit": sparsekit.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": str(dev), "device_name": _device_name(dev), "cuda": torch.version.cuda,
           "threads": torch.get_num_threads(), "settings": abl.settings, "source": abl.source}
    try:
        import triton  # type: ignore[import-not-found]

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    (out / ENV_JSON).write_text(json.dumps(env, indent=2, default=str) + "\n")


def run(config: str | Path | dict[str, Any], out: str | Path | None = None, *, device: str | None = None,
        dtype: str | None = None, progress: bool = True, plots: bool = True, summary: bool = True,
        console: Any = None) -> list[dict[str, Any]]:
    """Run an ablation (TOML path or dict) and return one row per cell, in grid order (workload, length,
    strategy). Finished cells found in ``out/results.jsonl`` are reused, not rerun. ``out`` overrides the
    config's ``out``; ``device``/``dtype`` override the config's."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    abl = load(config, device=device, dtype=dtype)
    st = abl.settings
    folder = Path(out or st["out"] or f"runs/{abl.source}")
    folder.mkdir(parents=True, exist_ok=True)
    _write_env(folder, abl)
    console = console or Console(stderr=True)  # progress; the summary goes to stdout
    table_console = console if console.file is not None and not console.stderr else Console()
    if not table_console.is_terminal:
        table_console = Console(file=table_console.file, width=max(table_console.width, 160))
    done = _read_done(folder / RESULTS_JSONL)
    dev, dt = torch.device(st["device"]), DTYPES[st["dtype"]]
    cells = abl.cells()
    keys = [abl.key(w, n, s) for w, n, s in cells]
    rows: list[dict[str, Any]] = []
    reused = 0
    cache: dict[str, Any] = {}
    columns = [TextColumn("[bold]ablate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}")]
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("", total=len(cells))
        i = 0
        while i < len(cells):
            w, n = cells[i][0], cells[i][1]
            group = [j for j in range(i, len(cells)) if cells[j][0] is w and cells[j][1] == n]
            todo = [j for j in group if keys[j] not in done]
            q = k = v = ref = None
            dense_ms = 0.0
            if todo:
                bar.update(task, description=f"{w.name} N={n}: inputs + dense")
                q, k, v = w.tensors(n, dev, dt, cache)
                dense_ms, ref = time_ms(lambda: _dense(q, k, v, st["dense"], w.scale), dev, repeats=st["repeats"],
                                        warmup=st["warmup"])
            for j in group:
                s = cells[j][2]
                if keys[j] in done:
                    rows.append(done[keys[j]])
                    reused += 1
                else:
                    bar.update(task, description=f"{w.name} N={n}: {s.name} {_params_text(s.params)}")
                    try:
                        row = _measure(abl, w, n, s, keys[j], q, k, v, ref, dense_ms)  # type: ignore[arg-type]
                    except SparsekitError as exc:  # name the cell; finished cells are already saved
                        cell = " ".join(x for x in (s.name, _params_text(s.params)) if x)
                        raise type(exc)(f"cell {cell} on {w.name} N={n}: {exc}") from None
                    _append(folder, row)
                    done[keys[j]] = row
                    rows.append(row)
                bar.advance(task)
            del q, k, v, ref
            i = group[-1] + 1
    if summary:
        table_console.print(summary_table(rows, title=f"{abl.source}: {len(rows) - reused} cells run, {reused} reused "
                                                f"— {folder}"))
    if plots:
        make_plots(rows, folder, abl, cache)
    return rows


# --------------------------------------------------------------------------------------------- reporting
def _groups(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Rows grouped by (strategy, params, label, workload, length), in first-seen order."""
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[(r["strategy"], r["params"], r["label"], r["workload"], r["length"])].append(r)
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else math.nan


def summary_table(rows: list[dict[str, Any]], title: str = "ablation") -> Any:
    """A rich table: one line per (strategy, params, workload, length), means over seeds/layers."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, just in (("strategy", "left"), ("params", "left"), ("workload", "left"), ("N", "right"),
                      ("cells", "right"), ("density", "right"), ("recall", "right"), ("rel err", "right"),
                      ("plan ms", "right"), ("attend ms", "right"), ("dense ms", "right"), ("kernel", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for (name, params, _label, wl, n), grp in _groups(rows).items():
        table.add_row(name, _short(params) or "—", wl, str(n), str(len(grp)), f"{_mean(grp, 'density'):.3f}",
                      f"{_mean(grp, 'recall'):.4f}", f"{_mean(grp, 'rel_error'):.4f}", f"{_mean(grp, 'plan_ms'):.1f}",
                      f"{_mean(grp, 'attend_ms'):.1f}", f"{_mean(grp, 'dense_ms'):.1f}", grp[0]["kernel"])
    return table


def _short(params: str) -> str:
    """``budget.gamma=0.9,estimator.g=2`` -> ``gamma=0.9,g=2`` (point annotations)."""
    return ",".join(p.split("=", 1)[0].split(".")[-1] + "=" + p.split("=", 1)[1] for p in params.split(",") if "=" in p)


def _figure(n_panels: int, ncols: int, size: tuple[float, float]) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _front_plot(rows: list[dict[str, Any]], metric: str, ylabel: str, path: Path, log: bool) -> None:
    panels = list(dict.fromkeys((r["workload"], r["length"]) for r in rows))
    fig, axes = _figure(len(panels), min(3, len(panels)), (5.2, 4.0))
    families = list(dict.fromkeys(r["strategy"] for r in rows))
    colors = {f: f"C{i % 10}" for i, f in enumerate(families)}
    groups = _groups(rows)
    for ax, (wl, n) in zip(axes, panels):
        for fam in families:
            pts = sorted((_mean(g, "density"), _mean(g, metric), params)
                         for (name, params, _l, w, ln), g in groups.items() if name == fam and w == wl and ln == n)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [max(p[1], 1e-7) if log else p[1] for p in pts]
            ax.plot(xs, ys, "-o", color=colors[fam], label=fam, markersize=5)
            for x, y, params in pts:
                if params:
                    ax.annotate(_short(params), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=colors[fam])
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("density (kept / causal blocks)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{wl}, N={n}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def _budget_hist(rows: list[dict[str, Any]], path: Path) -> None:
    families = list(dict.fromkeys(r["strategy"] for r in rows))
    fig, axes = _figure(len(families), min(3, len(families)), (5.2, 3.6))
    for ax, fam in zip(axes, families):
        by_label: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if r["strategy"] == fam:
                by_label[_short(r["params"]) or fam].extend(r["per_head"]["density"])
        for i, (lab, vals) in enumerate(by_label.items()):
            ax.hist(vals, bins=20, range=(0, 1), histtype="step", linewidth=1.6, color=f"C{i % 10}", label=lab)
        ax.set_xlabel("per-head budget (kept / causal blocks)")
        ax.set_ylabel("heads (all cells)")
        ax.set_title(fam, fontsize=10)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def _heatmaps(abl: Ablation, path: Path, cache: dict[str, Any]) -> None:
    st = abl.settings
    w = abl.workloads[0]
    n = st["heatmap_length"]
    if w.kind == "captured":
        n = min(n, w.identity["tokens"])
    dev, dt = torch.device(st["device"]), DTYPES[st["dtype"]]
    q, k, _ = w.tensors(n, dev, dt, cache)
    shown = abl.strategies[:16]
    fig, axes = _figure(len(shown), min(4, len(shown)), (3.4, 3.6))
    head = min(st["heatmap_head"], q.shape[1] - 1)
    for ax, s in zip(axes, shown):
        plan = s.attn.plan(q, k, scale=w.scale, timed=False)
        mask = plan.layout.to_dense()[0, head].float().cpu().numpy()
        ax.imshow(mask, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        title = s.name + (f"\n{_short(_params_text(s.params))}" if s.params else "")
        if (s.attn.block_q, s.attn.block_k) != (128, 128):
            title += f" @{s.attn.block_q}x{s.attn.block_k}"
        ax.set_title(f"{title}\ndensity {plan.layout.density_per_head()[0, head]:.3f}", fontsize=8)
        ax.set_xlabel("kv-block")
        ax.set_ylabel("q-block")
    fig.suptitle(f"kept blocks (black), query head {head}, {w.name}, N={n}",
                 fontsize=9)
    fig.savefig(path, dpi=110)


def make_plots(rows: list[dict[str, Any]], folder: str | Path, abl: Ablation | None = None,
               cache: dict[str, Any] | None = None) -> list[Path]:
    """Write the plots of ``rows`` into ``folder``: density vs recall and vs error (one front per strategy
    family), per-head budget histograms, and (given the ablation) mask heatmaps at the heatmap length."""
    folder = Path(folder)
    paths = []
    if rows:
        _front_plot(rows, "recall", "attention recall", folder / PLOTS[0], log=False)
        _front_plot(rows, "rel_error", "output relative error vs dense", folder / PLOTS[1], log=True)
        _budget_hist(rows, folder / PLOTS[2])
        paths += [folder / p for p in PLOTS[:3]]
    if abl is not None:
        _heatmaps(abl, folder / PLOTS[3], cache if cache is not None else {})
        paths.append(folder / PLOTS[3])
    return paths
