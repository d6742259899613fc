"""transformers integration: sparse prefill through ``AttentionInterface``, no patched forwards.

>>> import sparsekit.hf                                    # registers attn_implementation="sparsekit"
>>> sparsekit.hf.enable(model, "proxyattn", min_seq_len=8192, layers={"dense": [0, 1]})
>>> out = model(input_ids, attention_mask=mask)           # long prefill: sparse; decoding: SDPA
>>> sparsekit.hf.stats(model)                              # per layer: route, density, budgets, timings
>>> sparsekit.hf.disable(model)                            # back to the previous implementation

Or at load time: ``from_pretrained(..., attn_implementation="sparsekit")``, options through
``sparsekit.hf.configure(model, ...)`` or a ``sparsekit`` dict on the config (see docs/transformers.md).

Two functions are registered under the name ``"sparsekit"``:

* an attention function (``AttentionInterface``) with transformers' signature
  ``(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs) -> (out [B, N, Hq, D], None)``;
  it routes each call either to the sparse pipeline or to transformers' own SDPA function;
* a mask function (``AttentionMaskInterface``). For plain causal masks it returns a :class:`SparsekitMask`,
  a compact description (the 2D padding mask, offsets) that never materialises ``B x Nq x Nk``; the SDPA
  mask is only built (once per forward, shared by all layers) when a call is routed to SDPA. Any other
  mask pattern (sliding window, packed sequences, custom or/and masks, bidirectional) gets the exact mask
  SDPA would get, and those calls go to SDPA.
"""

from __future__ import annotations

import time
import warnings
import weakref
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .build import build
from .errors import ConfigError, UnsupportedError
from .pipeline import SparseAttention

NAME = "sparsekit"
DEFAULT_PRESET = "proxyattn"
# Below ~8K tokens ProxyAttn's minimum budget (2048 tokens = 16 blocks of 128) already covers most of every
# causal row: the layout is >= 74% dense at 4K (>= 43% at 8K, >= 23% at 16K), attention is a small share of a
# short forward, and the estimation overhead would eat the gain. See docs/transformers.md.
DEFAULT_MIN_SEQ_LEN = 8192
_SDPA_NAMES = ("sdpa", "dense", None)

__all__ = ["NAME", "SparsekitMask", "Settings", "attention_forward", "configure", "disable", "enable", "mask_function",
           "register", "settings", "stats"]


# ------------------------------------------------------------------------------------------------
# settings (per model config)
# ------------------------------------------------------------------------------------------------
class Settings:
    """Per-model configuration and the statistics of the last forward.

    ``preset``/``options`` build the default pipeline (``sparsekit.build(preset, **options)``); ``layers``
    overrides it per layer; ``min_seq_len`` is the context length from which prefill goes sparse.
    """

    def __init__(self, preset: Any = DEFAULT_PRESET, *, min_seq_len: int = DEFAULT_MIN_SEQ_LEN,
                 layers: Any = None, stats: bool = True, timing: bool = False, strict: bool = False,
                 **options: Any) -> None:
        if isinstance(min_seq_len, bool) or not isinstance(min_seq_len, int) or min_seq_len < 0:
            raise ConfigError(f"min_seq_len={min_seq_len!r} (allowed: an int >= 0, the context length from which "
                              f"prefill goes sparse). Fix: pass min_seq_len={DEFAULT_MIN_SEQ_LEN} (the default)")
        if layers is not None and not (callable(layers) or isinstance(layers, Mapping)):
            raise ConfigError(f"layers={layers!r} (allowed: None, a dict such as {{'dense': [0, 1]}} or "
                              "{0: 'dense', 5: 'proxyattn'}, or a callable layer_idx -> preset/None). "
                              "Fix: pass layers={'dense': [0, 1]}")
        self.preset, self.options = preset, dict(options)
        self.min_seq_len, self.layers = min_seq_len, layers
        self.collect_stats, self.timing, self.strict = bool(stats), bool(timing), bool(strict)
        self.default: SparseAttention = _build(preset, self.options)
        self._cache: dict[Any, SparseAttention | None] = {}
        self._layer_map: dict[int, Any] | None = _layer_map(layers) if isinstance(layers, Mapping) else None
        self.last: dict[int, dict[str, Any]] = {}         # layer -> stats of its last call
        self.last_sparse: dict[int, dict[str, Any]] = {}  # layer -> stats of its last sparse call
        self.from_config, self.source = False, None        # built from config.sparsekit (and that dict), or not
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return (f"<sparsekit.hf.Settings {self.default.name} min_seq_len={self.min_seq_len} "
                f"layers={self.layers!r} stats={self.collect_stats} timing={self.timing}>")

    def pipeline(self, layer_idx: int | None) -> SparseAttention | None:
        """The pipeline of a layer, or ``None`` for SDPA."""
        if self.layers is None or layer_idx is None:
            return self.default
        if self._layer_map is not None:
            spec = self._layer_map.get(layer_idx, "default")
        else:
            spec = self.layers(layer_idx)  # type: ignore[operator]
        return self._resolve(spec)

    def _resolve(self, spec: Any) -> SparseAttention | None:
        if spec is None or (isinstance(spec, str) and spec in ("sdpa", "dense")):
            return None
        if isinstance(spec, SparseAttention):
            return spec
        if isinstance(spec, str) and spec == "default":
            return self.default
        key = repr(sorted(spec.items())) if isinstance(spec, Mapping) else spec
        if key not in self._cache:
            if isinstance(spec, Mapping) and "preset" in spec:  # a pipeline of its own
                opts = dict(spec)
                self._cache[key] = _build(opts.pop("preset"), opts)
            elif isinstance(spec, Mapping):  # overrides of the model's default pipeline (its preset and options)
                self._cache[key] = build(self.default.config, **spec)
            elif isinstance(spec, str):
                self._cache[key] = _build(spec, {})
            else:
                raise ConfigError(f"layer setting {spec!r} (allowed: None/'sdpa'/'dense' for SDPA, 'default', a "
                                  "preset name, a dict of build options, or a SparseAttention). Fix: e.g. 'dense'")
        return self._cache[key]

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)


def _build(preset: Any, options: dict[str, Any]) -> SparseAttention:
    if isinstance(preset, SparseAttention):
        if options:
            raise ConfigError("options were given with a SparseAttention instance. Fix: pass the preset name instead")
        return preset
    return build(preset, **options)


def _layer_map(layers: Mapping[Any, Any]) -> dict[int, Any]:
    """``{"dense": [0, 1], "proxyattn": [5]}`` or ``{0: "dense", 5: {...}}`` -> ``{layer: spec}``."""
    out: dict[int, Any] = {}
    for key, val in layers.items():
        if isinstance(key, int) and not isinstance(key, bool):
            out[key] = val
        elif isinstance(key, str) or key is None:
            idxs = [val] if isinstance(val, int) else list(val)
            for i in idxs:
                if isinstance(i, bool) or not isinstance(i, int):
                    raise ConfigError(f"layers[{key!r}] holds {i!r} (allowed: layer indices). Fix: e.g. "
                                      f"layers={{{key!r}: [0, 1]}}")
                if i in out:
                    raise ConfigError(f"layer {i} is listed twice in layers={dict(layers)!r}. "
                                      "Fix: list each layer once")
                out[i] = key
        else:
            raise ConfigError(f"layers key {key!r} (allowed: a layer index, or a preset name / 'dense' mapping to a "
                              "list of layer indices). Fix: layers={'dense': [0, 1]}")
    return out


_STATES: dict[int, Settings] = {}  # id(config) -> settings; entries leave with their config (weakref.finalize)
_PREVIOUS: dict[int, Any] = {}     # id(config) -> attn implementation before enable()
_GLOBAL_KEY = 0


def _track(config: Any, settings: Settings) -> None:
    key = id(config)
    fresh = key not in _STATES
    _STATES[key] = settings
    if fresh and config is not None:
        try:
            weakref.finalize(config, _forget, key)
        except TypeError:  # not weak-referenceable: kept until disable()
            pass


def _forget(key: int) -> None:
    _STATES.pop(key, None)
    _PREVIOUS.pop(key, None)


def _model_configs(model: Any) -> list[Any]:
    """The model's config and every distinct config held by its sub-modules (sub-models of composite models)."""
    seen: dict[int, Any] = {}
    top = getattr(model, "config", None)
    if top is not None:
        seen[id(top)] = top
    if isinstance(model, torch.nn.Module):
        for mod in model.modules():
            cfg = getattr(mod, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
                seen[id(cfg)] = cfg
    return list(seen.values())


def _settings_from_dict(spec: Any) -> Settings:
    if spec is None:
        return Settings()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"config.sparsekit={spec!r} (allowed: a dict such as {{'preset': 'proxyattn', "
                          "'min_seq_len': 8192, 'kernel': 'triton'}}). "
                          "Fix: set a dict or call sparsekit.hf.configure()")
    opts = dict(spec)
    return Settings(opts.pop("preset", DEFAULT_PRESET), **opts)


def _settings_for(config: Any) -> Settings:
    """The settings of the model with this config: set by enable()/configure(), else read from ``config.sparsekit``
    (re-read when that dict changes), else the defaults."""
    key = id(config) if config is not None else _GLOBAL_KEY
    s = _STATES.get(key)
    spec = getattr(config, NAME, None) if config is not None else None
    snapshot = dict(spec) if isinstance(spec, Mapping) else spec
    if s is not None and (not s.from_config or s.source == snapshot):
        return s
    s = _settings_from_dict(spec)
    s.from_config, s.source = True, snapshot
    _track(config, s)
    return s


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def register() -> None:
    """Register ``"sparsekit"`` in transformers' ``AttentionInterface`` and ``AttentionMaskInterface`` (idempotent;
    done on import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask_function)


def configure(model: Any, preset: Any = DEFAULT_PRESET, *, min_seq_len: int = DEFAULT_MIN_SEQ_LEN,
              layers: Any = None, stats: bool = True, timing: bool = False, strict: bool = False,
              **options: Any) -> Settings:
    """Set the sparsekit options of ``model`` without changing its attention implementation.

    Use after ``from_pretrained(..., attn_implementation="sparsekit")``. ``preset`` and ``options`` go to
    :func:`sparsekit.build` (``estimator=``, ``budget=``, ``mask=``, ``kernel=``, ``block_q=``, ``block_k=``, ...);
    the pipeline is built (and its composition checked) here. ``model`` may also be a config.
    """
    s = Settings(preset, min_seq_len=min_seq_len, layers=layers, stats=stats, timing=timing, strict=strict, **options)
    configs = [model] if not isinstance(model, torch.nn.Module) else _model_configs(model)
    for cfg in configs:
        _track(cfg, s)
    return s


def enable(model: Any, preset: Any = DEFAULT_PRESET, *, min_seq_len: int = DEFAULT_MIN_SEQ_LEN, layers: Any = None,
           stats: bool = True, timing: bool = False, strict: bool = False, **options: Any) -> Settings:
    """Switch ``model`` to sparse prefill: configure it (see :func:`configure`) and set its attention
    implementation to ``"sparsekit"`` through ``model.set_attn_implementation``. :func:`disable` undoes it.

    ``min_seq_len``: contexts shorter than this run SDPA (default 8192). ``layers``: per-layer override, a dict
    ``{"dense": [0, 1]}`` / ``{0: "dense", 3: "proxyattn", 4: {"budget": "dynamic(gamma=0.9)"}}`` or a callable
    ``layer_idx -> spec`` where a spec is ``None``/``"sdpa"``/``"dense"`` (SDPA), ``"default"``, a preset name,
    a dict of build options (with ``preset``: a pipeline of its own; without: overrides of the default pipeline)
    or a :class:`SparseAttention`. ``stats``: record per-layer statistics (one host sync
    per sparse call); ``timing``: also time the stages (synchronises the device). ``strict``: raise instead of
    falling back to SDPA when no kernel can run an input.
    """
    register()
    s = configure(model, preset, min_seq_len=min_seq_len, layers=layers, stats=stats, timing=timing, strict=strict,
                  **options)
    for cfg in _model_configs(model):
        if id(cfg) not in _PREVIOUS and cfg._attn_implementation != NAME:
            _PREVIOUS[id(cfg)] = cfg._attn_implementation
    _set_implementation(model, NAME)
    if model.config._attn_implementation != NAME:
        impl = model.config._attn_implementation
        raise UnsupportedError(f"{type(model).__name__} kept attn_implementation={impl!r}: "
                               "it does not dispatch attention through transformers' AttentionInterface "
                               "(allowed: models whose attention calls ALL_ATTENTION_FUNCTIONS). Fix: use a model "
                               "class that supports attn_implementation='sdpa'")
    return s


def disable(model: Any) -> None:
    """Restore the attention implementation ``model`` had before :func:`enable` (``"sdpa"`` if unknown) and
    drop its sparsekit settings and statistics."""
    configs = _model_configs(model)
    top = model.config
    prev_top = _PREVIOUS.get(id(top))
    if prev_top is None or prev_top == NAME:
        prev_top = "sdpa"
    _set_implementation(model, prev_top)
    for cfg in configs:
        prev = _PREVIOUS.pop(id(cfg), None)
        if prev is not None and cfg._attn_implementation != prev:
            cfg._attn_implementation = prev
        elif prev is None and cfg._attn_implementation == NAME:
            cfg._attn_implementation = prev_top
        _STATES.pop(id(cfg), None)


def settings(model: Any) -> Settings:
    """The :class:`Settings` ``model`` uses (built from ``config.sparsekit`` or the defaults if not configured)."""
    return _settings_for(getattr(model, "config", None) if isinstance(model, torch.nn.Module) else model)


def stats(model: Any, *, sparse_only: bool = False) -> list[dict[str, Any]]:
    """Per-layer statistics of the last forward, sorted by layer.

    Each dict: ``layer``, ``route`` (``"sparse"`` or ``"sdpa"``), ``reason`` (why SDPA), ``batch``, ``q_len``,
    ``kv_len``, ``q_lens``/``k_lens`` (valid tokens per sequence when padded), and for sparse calls ``pipeline``,
    ``density`` (kept / causal blocks over the batch), ``density_per_head`` ``[B][Hq]``,
    ``budget_ratio_per_head`` ``[B][Hq]`` (dynamic budgets), ``timings_ms`` (with ``timing=True``: estimate,
    budget, mask, attend, total incl. padding copies), and with ``dense_above`` set ``dense_fallback`` (True: the
    planned density reached it and ``kernel`` computed dense attention). ``sparse_only=True`` gives each layer's
    last *sparse* call instead (e.g. the prefill, after ``generate()``'s decoding steps).
    """
    out: list[dict[str, Any]] = []
    for cfg in _model_configs(model):
        s = _STATES.get(id(cfg))
        if s is None:
            continue
        table = s.last_sparse if sparse_only else s.last
        out.extend(dict(table[k]) for k in sorted(table))
    return out


def reset_stats(model: Any) -> None:
    """Forget the recorded statistics of ``model``."""
    for cfg in _model_configs(model):
        s = _STATES.get(id(cfg))
        if s is not None:
            s.last.clear()
            s.last_sparse.clear()


def _set_implementation(model: Any, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(name)
    else:
        model.config._attn_implementation = name


# ------------------------------------------------------------------------------------------------
# mask function
# ------------------------------------------------------------------------------------------------
class SparsekitMask:
    """What the ``"sparsekit"`` mask function hands to every layer for a plain causal mask.

    ``padding``: bool ``[B, kv_len]`` (True = real token) or ``None``; ``q_len``, ``kv_len``; ``q_offset``: absolute
    position of the first query (bottom-right: ``kv_len - q_len`` with a dynamic cache; smaller with a static
    cache, whose tail keys are not written yet). The SDPA mask and the per-sequence lengths/gather indices are
    computed lazily, once per forward, and shared by all layers.
    """

    ndim = 4  # lets transformers' mask pre-processing pass it through untouched (generate() with static caches)

    def __init__(self, padding: Tensor | None, q_len: int, kv_len: int, q_offset: int, sdpa_kwargs: dict[str, Any],
                 original: Tensor | None) -> None:
        self.padding, self.q_len, self.kv_len, self.q_offset = padding, q_len, kv_len, q_offset
        self.sdpa_kwargs, self.original = sdpa_kwargs, original
        self._sdpa: Any = _UNSET
        self._layout: dict[tuple[int, int], _Varlen | None] = {}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        B = self.sdpa_kwargs["batch_size"]
        return (B, 1, self.q_len, self.kv_len)

    def __repr__(self) -> str:
        pad = "none" if self.padding is None else f"{tuple(self.padding.shape)}"
        return f"<SparsekitMask q_len={self.q_len} kv_len={self.kv_len} q_offset={self.q_offset} padding={pad}>"

    def sdpa_mask(self) -> Tensor | None:
        """The mask transformers' SDPA path would have received (built on first use)."""
        if self._sdpa is _UNSET:
            from transformers.masking_utils import sdpa_mask
            self._sdpa = sdpa_mask(**self.sdpa_kwargs)
        return self._sdpa

    def varlen(self, Nq: int, Nk: int) -> _Varlen | None:
        key = (Nq, Nk)
        if key not in self._layout:
            self._layout[key] = _Varlen.create(self.padding, Nq, Nk, self.q_offset)
        return self._layout[key]


_UNSET: Any = object()


def mask_function(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: int = 0,
                  mask_function: Callable | None = None, attention_mask: Any = None, local_size: int | None = None,
                  **kwargs: Any) -> Any:
    """``AttentionMaskInterface`` entry: a :class:`SparsekitMask` for plain causal masks, SDPA's mask otherwise."""
    from transformers import masking_utils as mu

    if isinstance(attention_mask, SparsekitMask):  # pre-built by generate() for static caches: rebuild for this call
        attention_mask = attention_mask.original
    mask_function = mu.causal_mask_function if mask_function is None else mask_function
    sdpa_kwargs = dict(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                       kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                       local_size=local_size, **kwargs)
    plain = (mask_function is mu.causal_mask_function and local_size is None and kv_offset == 0
             and not kwargs.get("use_vmap", False) and not _tracing())
    if not plain:
        return mu.sdpa_mask(**sdpa_kwargs)
    padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset) if attention_mask is not None else None
    if padding is not None:
        padding = padding[:, kv_offset: kv_offset + kv_length].to(torch.bool)
    q_off = int(q_offset)
    return SparsekitMask(padding, q_length, kv_length, q_off, sdpa_kwargs, attention_mask)


def _tracing() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover
        return False


# ------------------------------------------------------------------------------------------------
# padding: per-sequence lengths, and gathers when the valid tokens are not a prefix
# ------------------------------------------------------------------------------------------------
class _Varlen:
    """Per-sequence valid lengths of one forward, and the gather indices moving valid tokens to a prefix.

    sparsekit's contract is valid *prefixes* ``[0, len)``: right padding maps to ``q_lens``/``k_lens`` directly;
    left padding (or holes) is compacted by an order-preserving gather of q/k/v (and a scatter of the output).
    """

    def __init__(self, q_lens: Tensor, k_lens: Tensor, q_idx: Tensor | None, k_idx: Tensor | None, q_valid: Tensor,
                 max_q: int, max_k: int, keep: Tensor | None, full: bool) -> None:
        self.q_lens, self.k_lens, self.q_idx, self.k_idx = q_lens, k_lens, q_idx, k_idx
        self.q_valid, self.max_q, self.max_k, self.keep, self.full = q_valid, max_q, max_k, keep, full

    @classmethod
    def create(cls, padding: Tensor | None, Nq: int, Nk: int, q_offset: int) -> _Varlen | None:
        end = q_offset + Nq  # keys at or after `end` are not written yet (static caches)
        if end > Nk or q_offset < 0:
            raise UnsupportedError(f"queries at positions [{q_offset}, {end}) do not fit the {Nk} keys (allowed: "
                                   "queries at the end of the keys). Fix: use a DynamicCache or StaticCache")
        if padding is None and end == Nk:
            return None
        dev = padding.device if padding is not None else torch.device("cpu")
        pos = torch.arange(Nk, device=dev)
        if padding is None:
            kv_valid = (pos < end)[None, :]
        else:
            if padding.shape[-1] != Nk:
                raise UnsupportedError(f"padding mask of {padding.shape[-1]} keys for {Nk} keys")
            kv_valid = padding & (pos < end)[None, :]
        q_valid = kv_valid[:, q_offset:end]
        q_lens, k_lens = q_valid.sum(1), kv_valid.sum(1)
        q_prefix = bool((q_valid == (torch.arange(Nq, device=dev)[None, :] < q_lens[:, None])).all())
        k_prefix = bool((kv_valid == (pos[None, :] < k_lens[:, None])).all())
        q_idx = k_idx = None
        if not q_prefix:  # stable sort puts the valid positions first, in order
            q_idx = torch.argsort((~q_valid).to(torch.int8), dim=1, stable=True)
        if not (q_prefix and k_prefix):
            k_idx = torch.argsort((~kv_valid).to(torch.int8), dim=1, stable=True)
        max_q, max_k = int(q_lens.max()), int(k_lens.max())
        keep = None
        if int(q_lens.min()) == 0:  # sequences with no valid query in this call (e.g. a chunk made of padding)
            keep = torch.nonzero(q_lens > 0).flatten()
        full = bool((q_lens == Nq).all()) and bool((k_lens == Nk).all())
        return cls(q_lens.to(torch.int32), k_lens.to(torch.int32), q_idx, k_idx, q_valid, max_q, max_k, keep, full)


def _gather(x: Tensor, idx: Tensor | None, n: int) -> Tensor:
    """``x [B, H, N, D]`` -> its rows ``idx [B, N]`` (or the first rows), trimmed to ``n``."""
    if idx is None:
        return x[:, :, :n]
    idx = idx[:, :n]
    return torch.gather(x, 2, idx[:, None, :, None].expand(x.shape[0], x.shape[1], n, x.shape[3]))


# ------------------------------------------------------------------------------------------------
# attention function
# ------------------------------------------------------------------------------------------------
def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, None]:
    """``AttentionInterface`` entry: ``query [B, Hq, Nq, D]``, ``key/value [B, Hkv, Nk, D]`` ->
    ``(out [B, Nq, Hq, D], None)``. Routes to the sparse pipeline or to transformers' SDPA function."""
    s = _settings_for(getattr(module, "config", None))
    layer = getattr(module, "layer_idx", None)
    B, _, Nq, _ = query.shape
    Nk = key.shape[2]
    mask = attention_mask if isinstance(attention_mask, SparsekitMask) else None
    context = (mask.q_offset + Nq) if mask is not None else Nk
    record: dict[str, Any] = {"layer": -1 if layer is None else layer, "batch": B, "q_len": Nq, "kv_len": context}

    reason = _dense_reason(module, query, attention_mask, dropout, kwargs, s, context)
    pipe = None
    if reason is None:
        pipe = s.pipeline(layer)
        if pipe is None:
            reason = "layer override"
    if reason is None:
        try:
            out = _sparse(pipe, query, key, value, mask, scaling, s, record)  # type: ignore[arg-type]
            _store(s, record, sparse=True)
            return out, None
        except UnsupportedError as exc:
            if s.strict:
                raise
            reason = f"unsupported: {str(exc).splitlines()[0]}"
            s.warn_once(reason, f"sparsekit: layer {layer} falls back to SDPA: {exc}")
    record.update(route="sdpa", reason=reason)
    if s.collect_stats:
        _store(s, record, sparse=False)
    return _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs), None


def _dense_reason(module: Any, query: Tensor, attention_mask: Any, dropout: float, kwargs: dict[str, Any],
                  s: Settings, context: int) -> str | None:
    """Why this call must (or should) run SDPA, or ``None`` if it may go sparse."""
    Nq = query.shape[2]
    if kwargs.get("s_aux") is not None:  # SDPA would silently drop the sinks
        raise UnsupportedError("attention sinks (s_aux, e.g. gpt-oss) are not supported by attn_implementation="
                               "'sparsekit' (allowed: models whose attention is plain softmax attention). Fix: use "
                               "the model's own attn_implementation (e.g. 'eager')")
    if Nq == 1:
        return "decode"
    if attention_mask is not None and not isinstance(attention_mask, SparsekitMask):
        return "custom mask"  # sliding window, packed sequences, user 4D masks, bidirectional...
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if not is_causal:
        return "not causal"
    if kwargs.get("sliding_window") is not None:
        return "sliding window"
    for feature in ("softcap", "position_bias"):
        if kwargs.get(feature) is not None:
            return f"unsupported feature: {feature}"
    if dropout and dropout > 0.0:
        return "dropout"
    if torch.is_grad_enabled() and query.requires_grad:
        return "training (gradients)"
    if context < s.min_seq_len:
        return "short"
    return None


def _sdpa(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any, scaling: float | None,
          dropout: float, kwargs: dict[str, Any]) -> Tensor:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, SparsekitMask):
        attention_mask = attention_mask.sdpa_mask()
    Nq, Nk = query.shape[2], key.shape[2]
    if attention_mask is None and 1 < Nq < Nk:  # bottom-right causal; transformers' SDPA would crop the keys
        r = torch.arange(Nq, device=query.device)[:, None] + (Nk - Nq)
        attention_mask = (torch.arange(Nk, device=query.device)[None, :] <= r)[None, None]
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    return out


def _sparse(pipe: SparseAttention, query: Tensor, key: Tensor, value: Tensor, mask: SparsekitMask | None,
            scaling: float | None, s: Settings, record: dict[str, Any]) -> Tensor:
    timed = s.timing
    t0 = _now(query.device) if timed else 0.0
    B, Hq, Nq, D = query.shape
    Nk = key.shape[2]
    vl = mask.varlen(Nq, Nk) if mask is not None else None
    out_final: Tensor
    vg = value
    if vl is None:
        res = pipe(query, key, value, causal=True, scale=scaling, return_plan=s.collect_stats, timed=timed)
        out, plan = res if s.collect_stats else (res, None)
        out_final = out.transpose(1, 2).contiguous()
    else:
        q, k, v = query, key, value
        q_lens, k_lens, q_idx, k_idx = vl.q_lens, vl.k_lens, vl.q_idx, vl.k_idx
        if vl.keep is not None:  # drop sequences without queries in this call
            q, k, v = q[vl.keep], k[vl.keep], v[vl.keep]
            q_lens, k_lens = q_lens[vl.keep], k_lens[vl.keep]
            q_idx = q_idx[vl.keep] if q_idx is not None else None
            k_idx = k_idx[vl.keep] if k_idx is not None else None
        if vl.keep is not None and vl.keep.numel() == 0:
            out_final = query.new_zeros(B, Nq, Hq, value.shape[-1])
            plan = None
        else:
            qg, kg, vg = _gather(q, q_idx, vl.max_q), _gather(k, k_idx, vl.max_k), _gather(v, k_idx, vl.max_k)
            res = pipe(qg, kg, vg, causal=True, q_lens=None if vl.full else q_lens, k_lens=None if vl.full else k_lens,
                       scale=scaling, return_plan=s.collect_stats, timed=timed)
            out, plan = res if s.collect_stats else (res, None)
            # zero rows past each sequence's length (padding), then put rows back at their positions
            rows = torch.arange(vl.max_q, device=out.device)
            out = out.masked_fill((rows[None, :] >= q_lens[:, None].to(out.device))[:, None, :, None], 0.0)
            full = out.new_zeros(out.shape[0], Hq, Nq, out.shape[-1])
            if q_idx is None:
                full[:, :, : vl.max_q] = out
            else:
                idx = q_idx[:, : vl.max_q]
                full.scatter_(2, idx[:, None, :, None].expand(out.shape[0], Hq, vl.max_q, out.shape[-1]), out)
            if vl.keep is not None:
                whole = full.new_zeros(B, Hq, Nq, full.shape[-1])
                whole[vl.keep] = full
                full = whole
            out_final = full.transpose(1, 2).contiguous()
        if s.collect_stats:
            record["q_lens"], record["k_lens"] = vl.q_lens.tolist(), vl.k_lens.tolist()
    record["route"] = "sparse"
    record["reason"] = None
    if plan is not None:
        summary = plan.summary()
        # the kernel that ran (with dense_above reached, the dense one; the density stays the plan's)
        record.update(pipeline=summary["name"], kernel=plan.info["kernel_name"], density=summary["density"],
                      density_per_head=summary["density_per_head"])
        if pipe.dense_above is not None:
            record["dense_fallback"] = bool(plan.info.get("dense_fallback"))
            if "dense_fallback_reason" in plan.info:
                record["dense_fallback_reason"] = plan.info["dense_fallback_reason"]
        if "budget_ratio_per_head" in summary:
            record["budget_ratio_per_head"] = summary["budget_ratio_per_head"]
        if timed:
            record["timings_ms"] = dict(summary["timings_ms"])
    else:
        record["pipeline"] = pipe.name
    if timed:
        record.setdefault("timings_ms", {})["total"] = _now(query.device) - t0
    return out_final


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() * 1e3


def _store(s: Settings, record: dict[str, Any], *, sparse: bool) -> None:
    if not s.collect_stats:
        return
    s.last[record["layer"]] = record
    if sparse:
        s.last_sparse[record["layer"]] = record


try:  # register on import; without transformers the module still imports (register() then raises)
    register()
except ImportError:  # pragma: no cover
    pass
