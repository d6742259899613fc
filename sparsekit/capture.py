"""Capture the real q/k/v a transformers model feeds its attention, per layer, to ablate on your own model.

>>> import torch, sparsekit
>>> from sparsekit.capture import capture_qkv, load_qkv
>>> ids = tok(long_text, return_tensors="pt").input_ids.to(model.device)      # batch 1
>>> qkv = capture_qkv(model, ids, layers=[0, 15, 31], path="llama-32k.safetensors", device="cpu")
>>> q, k, v = qkv[15]                  # q [1, Hq, N, D], k/v [1, Hkv, N, D]: after RoPE, before repeat_kv
>>> qkv = load_qkv("llama-32k.safetensors")      # later, on any machine
>>> q, k, v = (t.cuda() for t in qkv[15])
>>> ref = sparsekit.dense_attention(q, k, v, scale=qkv.metadata["scaling"][15])
>>> out = sparsekit.build("proxyattn")(q, k, v, scale=qkv.metadata["scaling"][15])

How: a temporary attention function is registered in transformers' ``AttentionInterface`` (and the model's mask
function under the same name, so every layer gets exactly the mask it had). It records ``query``, ``key``,
``value`` as the layer hands them over and delegates to the implementation the model had (``sdpa``, ``eager``,
``sparsekit``, ...), so the forward and its outputs are unchanged. Afterwards the model's implementation is
restored and the temporary names are removed. No forward is patched.

Memory: every captured layer holds ``N * D * (Hq + 2 Hkv)`` values (Llama-3.1-8B at 128K tokens in bf16:
1.5 GiB per layer). Pass ``device="cpu"`` to move each layer off the GPU as soon as it is recorded, and
``layers=`` to keep only the layers you need (the forward then stops after the last of them).

File format (safetensors): tensors ``layer{i}.q`` ``[1, Hq, N, D]``, ``layer{i}.k`` and ``layer{i}.v``
``[1, Hkv, N, D]``; string metadata ``format`` (``"sparsekit.qkv/1"``), ``model_type``, ``name_or_path``,
``num_heads``, ``num_kv_heads``, ``head_dim``, ``seq_len``, ``layers`` (comma separated), ``dtype``,
``implementation`` (the wrapped attention implementation) and ``layer_info`` (JSON: per layer ``scaling``, and
``sliding_window``/``softcap`` when the layer had them). :func:`load_qkv` parses it back into
``CapturedQKV.metadata`` (ints as ints, ``scaling`` as ``{layer: float}``).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from .errors import InputError, UnsupportedError

__all__ = ["CapturedQKV", "Recorder", "capture_qkv", "load_qkv", "recording", "save_qkv"]

FORMAT = "sparsekit.qkv/1"
_PREFIX = "sparsekit-capture"
_COUNTER = itertools.count()
_LOCK = threading.Lock()


class CapturedQKV(dict):
    """``{layer: (q, k, v)}`` (a plain dict) plus ``metadata``: model type, head counts, ``seq_len``, per-layer
    ``scaling`` (the softmax scale the layer used; pass it as ``scale=`` when the model's is not ``1/sqrt(D)``)."""

    def __init__(self, *args: Any, metadata: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metadata: dict[str, Any] = dict(metadata or {})


class _StopForward(Exception):
    """Raised by the recorder after the last requested layer: the rest of the forward is not needed."""


class Recorder:
    """What :func:`recording` collects during the forwards run inside it.

    ``qkv``: ``{layer: (q, k, v)}`` of the last call of each layer; ``outputs``: ``{layer: out [B, N, Hq, D]}``
    (what the wrapped implementation returned; only with ``outputs=True``); ``info``: ``{layer: {"scaling": ...,
    ...}}``; ``implementations``: the implementations that were wrapped.
    """

    def __init__(self, layers: Iterable[int] | None, device: Any, dtype: torch.dtype | None, outputs: bool,
                 stop_after_last: bool) -> None:
        self.layers = None if layers is None else sorted({int(i) for i in layers})
        self.device, self.dtype, self.keep_outputs = device, dtype, outputs
        self.stop_after_last = stop_after_last and self.layers is not None
        self.qkv: CapturedQKV = CapturedQKV()
        self.outputs: dict[int, Tensor] = {}
        self.info: dict[int, dict[str, Any]] = {}
        self.implementations: set[str] = set()
        self._seen: set[int] = set()

    def reset(self) -> None:
        """Forget what was recorded (calls of one forward are told apart from the next by this)."""
        self.qkv.clear()
        self.outputs.clear()
        self.info.clear()
        self._seen.clear()

    def _keep(self, t: Tensor) -> Tensor:
        # always a copy: the layer's tensors may be views of a cache that later calls write into
        return t.detach().to(device=self.device if self.device is not None else t.device,
                             dtype=self.dtype if self.dtype is not None else t.dtype,
                             copy=True, memory_format=torch.contiguous_format)

    def _record(self, module: Any, query: Tensor, key: Tensor, value: Tensor, out: Tensor | None,
                kwargs: dict[str, Any]) -> None:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise UnsupportedError(f"{type(module).__name__} has no layer_idx (allowed: attention modules of "
                                   "transformers decoder models, which carry layer_idx). Fix: capture the language "
                                   "model itself")
        layer = int(layer)
        if self.layers is not None and layer not in self.layers:
            return
        if layer in self._seen:
            raise UnsupportedError(f"layer {layer} was called twice in one forward (allowed: one attention call per "
                                   "layer, as in a decoder-only model). Fix: capture the language model of a composite "
                                   "model (e.g. model.model.language_model), or call Recorder.reset() between "
                                   "forwards")
        self._seen.add(layer)
        self.qkv[layer] = (self._keep(query), self._keep(key), self._keep(value))
        if self.keep_outputs and out is not None:
            self.outputs[layer] = self._keep(out)
        info: dict[str, Any] = {"scaling": _scaling(module, kwargs, query.shape[-1])}
        for feature in ("sliding_window", "softcap"):
            val = kwargs.get(feature, getattr(module, feature, None))
            if val is not None:
                info[feature] = val
        self.info[layer] = info

    def _done(self) -> bool:
        return self.stop_after_last and self.layers is not None and set(self.layers) <= self._seen


def _scaling(module: Any, kwargs: dict[str, Any], head_dim: int) -> float:
    s = kwargs.get("scaling")
    if s is None:
        s = getattr(module, "scaling", None)
    return float(s) if s is not None else head_dim ** -0.5


def _model_configs(model: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for cfg in [getattr(model, "config", None)] + [getattr(m, "config", None) for m in model.modules()]:
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal") and id(cfg) not in seen:
            seen[id(cfg)] = cfg
    return list(seen.values())


def _delegate(impl: str | None) -> Callable[..., Any]:
    """The attention function ``impl`` names, resolved at call time (``eager`` is the model's own function)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if impl is not None and impl != "eager" and impl in ALL_ATTENTION_FUNCTIONS:
        fn = ALL_ATTENTION_FUNCTIONS[impl]
        return lambda module, *a, **kw: fn(module, *a, **kw)

    def eager(module: Any, *a: Any, **kw: Any) -> Any:
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            raise UnsupportedError(f"attn_implementation={impl!r} of {type(module).__name__}: no "
                                   f"eager_attention_forward in {type(module).__module__} (allowed: implementations "
                                   "registered in transformers' AttentionInterface, or models with an eager function). "
                                   "Fix: load the model with attn_implementation='sdpa'")
        return fn(module, *a, **kw)

    return eager


@contextmanager
def recording(model: Any, *, layers: Iterable[int] | None = None, device: str | torch.device | None = None,
              dtype: torch.dtype | None = None, outputs: bool = False, stop_after_last: bool = False
              ) -> Iterator[Recorder]:
    """Record the q/k/v (and, with ``outputs=True``, the outputs) of every attention call of ``model`` run inside.

    >>> with recording(model, layers=[3]) as rec:
    ...     model(ids)
    >>> q, k, v = rec.qkv[3]

    Each config of the model gets a temporary implementation name registered in ``AttentionInterface`` (and the
    ``AttentionMaskInterface`` entry of the implementation it wraps, so masks are unchanged); both are removed and
    the configs restored on exit, also on error. With ``stop_after_last=True`` (needs ``layers``) the forward is cut
    short after the last requested layer (the exception is swallowed by this context manager).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if stop_after_last and layers is None:
        raise InputError("stop_after_last=True without layers (allowed: stop_after_last with a list of layers). "
                         "Fix: pass layers=[...] or stop_after_last=False")
    rec = Recorder(layers, device, dtype, outputs, stop_after_last)
    configs = _model_configs(model)
    if not configs:
        raise InputError(f"model={type(model).__name__} has no transformers config (allowed: a transformers "
                         "PreTrainedModel). Fix: pass the model loaded with from_pretrained")
    with _LOCK:
        token = next(_COUNTER)
    previous = {id(cfg): cfg._attn_implementation_internal for cfg in configs}
    names: dict[Any, str] = {}
    for impl in dict.fromkeys(previous.values()):
        name = f"{_PREFIX}-{token}-{impl}"
        names[impl] = name
        AttentionInterface.register(name, _wrapper(rec, impl))
        if impl is not None and impl in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = names[previous[id(cfg)]]
        try:
            yield rec
        except _StopForward:
            pass
    finally:
        for cfg in configs:
            cfg._attn_implementation_internal = previous[id(cfg)]
        for name in names.values():
            AttentionInterface._global_mapping.pop(name, None)
            AttentionMaskInterface._global_mapping.pop(name, None)


def _wrapper(rec: Recorder, impl: str | None) -> Callable[..., Any]:
    delegate = _delegate(impl)

    def capture_attention(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                          *args: Any, **kwargs: Any) -> Any:
        result = delegate(module, query, key, value, attention_mask, *args, **kwargs)
        out = result[0] if isinstance(result, tuple) else result
        rec.implementations.add(str(impl))
        rec._record(module, query, key, value, out, kwargs)
        if rec._done():
            raise _StopForward()
        return result

    return capture_attention


def capture_qkv(model: Any, input_ids: Tensor, *, layers: Iterable[int] | None = None, path: str | None = None,
                dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                **forward_kwargs: Any) -> CapturedQKV:
    """Run one forward of ``model`` on ``input_ids`` (batch 1) and return ``{layer: (q, k, v)}``.

    ``q [1, Hq, N, D]``, ``k, v [1, Hkv, N, D]`` exactly as the attention function sees them: after RoPE (and
    any q/k norm), before ``repeat_kv``. ``layers``: the layer indices to keep (default all; the forward stops
    after the last one). ``dtype``/``device``: cast / move each tensor as it is recorded (default: as the model
    produced them). ``path``: also save them (:func:`save_qkv`). ``forward_kwargs`` go to ``model(...)``. The model
    runs under ``torch.inference_mode`` without a cache; its outputs are discarded.
    """
    if not isinstance(input_ids, Tensor):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise InputError(f"input_ids of shape {tuple(input_ids.shape)} (allowed: one sequence, [1, N] or [N]). "
                         "Fix: capture one prompt at a time, e.g. input_ids[i:i + 1]")
    if input_ids.shape[1] < 1:
        raise InputError("input_ids is empty (allowed: at least one token). Fix: pass a prompt")
    layers = None if layers is None else sorted({int(i) for i in layers})
    forward_kwargs.setdefault("use_cache", False)
    with recording(model, layers=layers, device=device, dtype=dtype, stop_after_last=layers is not None) as rec:
        with torch.inference_mode():
            model(input_ids=input_ids, **forward_kwargs)
    if layers is not None:
        missing = [i for i in layers if i not in rec.qkv]
        if missing:
            raise InputError(f"layers={layers} but layers {missing} never ran attention (recorded: "
                             f"{sorted(rec.qkv)}). Fix: pass indices in [0, num_hidden_layers)")
    captured = CapturedQKV(sorted(rec.qkv.items()), metadata=_metadata(model, rec, int(input_ids.shape[1])))
    if path is not None:
        save_qkv(captured, path)
    return captured


def _metadata(model: Any, rec: Recorder, n: int) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    any_q, any_k, _ = next(iter(rec.qkv.values())) if rec.qkv else (None, None, None)
    meta: dict[str, Any] = {
        "model_type": str(getattr(text, "model_type", "") or getattr(cfg, "model_type", "")),
        "name_or_path": str(getattr(cfg, "_name_or_path", "") or ""),
        "seq_len": n,
        "implementation": ",".join(sorted(rec.implementations)),
    }
    if any_q is not None:
        meta.update(num_heads=int(any_q.shape[1]), num_kv_heads=int(any_k.shape[1]), head_dim=int(any_q.shape[-1]))
    meta["layer_info"] = {i: rec.info[i] for i in sorted(rec.info)}
    meta["scaling"] = {i: rec.info[i]["scaling"] for i in sorted(rec.info)}
    return meta


def save_qkv(captured: Mapping[int, tuple[Tensor, Tensor, Tensor]], path: str) -> None:
    """Write ``{layer: (q, k, v)}`` to a safetensors file (keys ``layer{i}.q/.k/.v``, metadata as in the module
    docstring; what ``captured.metadata`` lacks is inferred from the tensors)."""
    from safetensors.torch import save_file

    if not captured:
        raise InputError("captured is empty (allowed: {layer: (q, k, v)} with at least one layer). "
                         "Fix: capture at least one layer")
    tensors: dict[str, Tensor] = {}
    shapes = None
    for layer in sorted(captured):
        q, k, v = captured[layer]
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[2] != k.shape[2]:
            raise InputError(f"layer {layer}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} (allowed: "
                             "q [1, Hq, N, D], k/v [1, Hkv, N, D]). Fix: pass what capture_qkv returned")
        shapes = shapes or (q.shape, k.shape)
        for name, t in (("q", q), ("k", k), ("v", v)):
            tensors[f"layer{int(layer)}.{name}"] = t.detach().contiguous().cpu()
    meta_in: dict[str, Any] = dict(getattr(captured, "metadata", {}) or {})
    q0, k0 = shapes  # type: ignore[misc]
    first = captured[sorted(captured)[0]][0]
    meta_in.setdefault("num_heads", int(q0[1]))
    meta_in.setdefault("num_kv_heads", int(k0[1]))
    meta_in.setdefault("head_dim", int(q0[3]))
    meta_in.setdefault("seq_len", int(q0[2]))
    meta_in.setdefault("model_type", "")
    meta_in.pop("scaling", None)  # stored inside layer_info
    meta: dict[str, str] = {
        "format": FORMAT,
        "layers": ",".join(str(int(i)) for i in sorted(captured)),
        "dtype": str(first.dtype).removeprefix("torch."),
    }
    for key, val in meta_in.items():
        if key == "layer_info":
            meta[key] = json.dumps({str(i): d for i, d in val.items()}, sort_keys=True)
        elif key not in meta:
            meta[key] = val if isinstance(val, str) else json.dumps(val)
    save_file(tensors, str(path), metadata=meta)


_INT_KEYS = ("num_heads", "num_kv_heads", "head_dim", "seq_len")


def load_qkv(path: str, *, layers: Iterable[int] | None = None, device: str | torch.device = "cpu") -> CapturedQKV:
    """Read a file written by :func:`save_qkv` into ``{layer: (q, k, v)}`` (a :class:`CapturedQKV`, with
    ``metadata``: ints for head counts and ``seq_len``, ``layers`` as a list (all layers in the file),
    ``scaling`` as ``{layer: float}``). ``layers``: load only these (the others are not read)."""
    from safetensors import safe_open

    out = CapturedQKV()
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        raw = dict(f.metadata() or {})
        keys = set(f.keys())
        avail = sorted({int(key.split(".")[0].removeprefix("layer")) for key in keys if key.startswith("layer")})
        wanted = avail if layers is None else sorted({int(i) for i in layers})
        absent = [i for i in wanted if i not in avail]
        if absent:
            raise InputError(f"layers={wanted} but {path} holds layers {avail} (missing {absent}). "
                             "Fix: ask for layers the file has, or capture them")
        for i in wanted:
            names = [f"layer{i}.{n}" for n in ("q", "k", "v")]
            missing = [n for n in names if n not in keys]
            if missing:
                raise InputError(f"{path}: layer {i} lacks {missing} (allowed: files written by save_qkv). "
                                 "Fix: re-capture the file")
            out[i] = tuple(f.get_tensor(n) for n in names)  # type: ignore[assignment]
    if raw.get("format") not in (None, FORMAT):
        raise InputError(f"{path}: format={raw.get('format')!r} (allowed: {FORMAT!r}). Fix: re-capture the file")
    meta: dict[str, Any] = {}
    for key, val in raw.items():
        if key in _INT_KEYS:
            meta[key] = int(val)
        elif key == "layers":
            meta[key] = [int(x) for x in val.split(",") if x]
        elif key == "layer_info":
            meta[key] = {int(i): d for i, d in json.loads(val).items()}
        else:
            meta[key] = val
    info = meta.get("layer_info", {})
    meta["scaling"] = {i: float(info.get(i, {}).get("scaling", out[i][0].shape[-1] ** -0.5)) for i in out}
    out.metadata = meta
    return out
