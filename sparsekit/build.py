"""``build()``: compose stages by name (with options, presets or a config file) and check the composition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PIPELINE_KEYS, SCALAR_KEYS, load_config, parse_spec
from .errors import CompositionError, ConfigError, invalid
from .pipeline import SparseAttention, check_dense_above
from .registry import Registry, get_registry
from .stages import Budgeter, Estimator, MaskBuilder, Stage

_UNSET: Any = object()
DEFAULTS: dict[str, Any] = {"estimator": None, "budget": None, "mask": {"name": "topk"}, "kernel": {"name": "auto"},
                            "block_q": 128, "block_k": 128, "check_finite": False, "validate": False,
                            "dense_above": None, "overlap_budget": False}


def build(preset: str | Path | dict[str, Any] | None = None, *, estimator: Any = _UNSET, budget: Any = _UNSET,
          mask: Any = _UNSET, kernel: Any = _UNSET, block_q: int | None = None, block_k: int | None = None,
          config: str | Path | dict[str, Any] | None = None, check_finite: bool | None = None,
          validate: bool | None = None, dense_above: float | None = _UNSET, overlap_budget: bool | None = None,
          registry: Registry | None = None) -> SparseAttention:
    """Compose an attention callable.

    ``preset`` names a registered preset (``"proxyattn"``) or is a config (dict or TOML path, same as
    ``config=``). Stage arguments take a name (``"proxy"``), a label with options (``"proxy(stride=8)"``),
    a dict ``{"name": ..., **options}``, a dict of options alone (overrides the preset's stage), a stage
    instance, or ``None`` (no such stage). The mask defaults to ``"topk"``; ``kernel="auto"`` (default)
    picks, per call, the highest-priority kernel that can run the inputs. ``dense_above`` (a fraction in (0, 1],
    default ``None``: off): when a plan's density reaches it, the call runs dense attention (a kernel declaring
    ``dense = True``, e.g. ``sdpa``) instead of the layout. ``overlap_budget`` (default ``False``): run a budget
    that reads no scores beside the estimate on CUDA (``SparseAttention``; it helps some shapes, not all).
    """
    reg = registry or get_registry()
    cfg: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    sources = [preset] if preset is not None else []
    sources += [config] if config is not None else []
    for src in sources:
        if isinstance(src, (dict, Path)) or (isinstance(src, str) and (src.endswith(".toml") or "/" in src)):
            loaded = load_config(src)
            if "preset" in loaded:
                _merge(cfg, load_config(reg.preset(loaded.pop("preset")).config))
            _merge(cfg, loaded)
        elif isinstance(src, str):
            _merge(cfg, load_config(reg.preset(src).config))
        else:
            raise invalid("preset", src, "a preset name, a config dict or a TOML path", "e.g. build('proxyattn')",
                          ConfigError)
    overrides = {"estimator": estimator, "budget": budget, "mask": mask, "kernel": kernel}
    for key, val in overrides.items():
        if val is _UNSET:
            continue
        if isinstance(val, Stage):
            cfg[key] = val
            continue
        spec = parse_spec(val, key)
        if spec is not None and "name" not in spec:
            if cfg.get(key) is None:
                raise ConfigError(f"{key}={val!r} gives options but no stage name, and no preset provides a {key}. "
                                  f"Fix: add 'name', e.g. {key}={{'name': ..., **options}}")
            base = cfg[key].spec() if isinstance(cfg[key], Stage) else dict(cfg[key])
            spec = {**base, **spec}
        cfg[key] = spec
    for key, val in (("block_q", block_q), ("block_k", block_k), ("check_finite", check_finite), ("validate", validate),
                     ("overlap_budget", overlap_budget)):
        if val is not None:
            cfg[key] = val
    if dense_above is not _UNSET:  # None is a value here (off), overriding a preset's or config's threshold
        cfg["dense_above"] = dense_above
    return from_config(cfg, reg)


def _merge(cfg: dict[str, Any], new: dict[str, Any]) -> None:
    for key, val in new.items():
        if key in PIPELINE_KEYS:
            cfg[key] = parse_spec(val, key)
        elif key in SCALAR_KEYS:
            cfg[key] = val
        else:
            raise ConfigError(f"unknown configuration key {key!r} (allowed: "
                              f"{', '.join(PIPELINE_KEYS + SCALAR_KEYS)}). Fix: remove or rename it")


def _instantiate(reg: Registry, kind: Any, spec: Any) -> Any:
    if spec is None or isinstance(spec, Stage):
        return spec
    spec = dict(spec)
    name = spec.pop("name")
    return reg.get(kind, name).cls.create(**spec)


def from_config(cfg: dict[str, Any], registry: Registry | None = None) -> SparseAttention:
    """Build from a complete configuration dict (as returned by ``SparseAttention.config``)."""
    reg = registry or get_registry()
    full = {**DEFAULTS, **cfg}
    for key in ("block_q", "block_k"):
        if full[key] not in (16, 32, 64, 128, 256, 512):
            raise invalid(key, full[key], "a power of two in 16..512", f"pass {key}=128", ConfigError)
    dense_above = check_dense_above(full["dense_above"])  # before any stage is built
    if not isinstance(full["overlap_budget"], bool):
        raise invalid("overlap_budget", full["overlap_budget"], "True or False", "pass overlap_budget=True",
                      ConfigError)
    est = _instantiate(reg, "estimator", parse_spec(full["estimator"], "estimator") if not isinstance(full["estimator"], Stage) else full["estimator"])
    bud = _instantiate(reg, "budget", parse_spec(full["budget"], "budget") if not isinstance(full["budget"], Stage) else full["budget"])
    if full["mask"] is None:
        raise ConfigError("mask=None (allowed: a mask builder name). Fix: pass mask='topk' (the default)")
    msk = _instantiate(reg, "mask", parse_spec(full["mask"], "mask") if not isinstance(full["mask"], Stage) else full["mask"])
    kspec = full["kernel"] if isinstance(full["kernel"], Stage) else parse_spec(full["kernel"], "kernel")
    if kspec is None or (isinstance(kspec, dict) and kspec.get("name") == "auto"):
        if isinstance(kspec, dict) and len(kspec) > 1:
            raise ConfigError("kernel 'auto' takes no options. Fix: name the kernel to pass options to it")
        ker = None
    else:
        ker = _instantiate(reg, "kernel", kspec)
    check_composition(est, bud, msk, reg)
    kernels = sorted((e.cls.create() for e in reg.stages["kernel"].values()),
                     key=lambda k: (-k.priority, k.name))
    if ker is not None:
        kernels = [ker] + [k for k in kernels if k.name != ker.name]
    return SparseAttention(est, bud, msk, ker, kernels=kernels, block_q=full["block_q"], block_k=full["block_k"],
                           check_finite=bool(full["check_finite"]), validate=bool(full["validate"]),
                           dense_above=dense_above, overlap_budget=full["overlap_budget"])


def check_composition(est: Estimator | None, bud: Budgeter | None, msk: MaskBuilder, reg: Registry) -> None:
    """Refuse incompatible stages before any tensor is seen, naming the pair and the alternatives."""
    def alternatives(kind: Any, ok: Any) -> str:
        names = [n for n, e in sorted(reg.stages[kind].items()) if ok(e.cls)]
        return ", ".join(names) or "none registered"

    for stage in (est, bud, msk):
        if stage is not None and not isinstance(stage, (Estimator, Budgeter, MaskBuilder)):
            raise CompositionError(f"{stage!r} is not a planning stage")
    if msk.needs_scores and est is None:
        raise CompositionError(f"mask {msk.name!r} needs block scores but no estimator was given. Fix: pass "
                               f"estimator=... (available: {alternatives('estimator', lambda c: c.produces in msk.accepts_scores)})")
    if est is not None and msk.needs_scores and est.produces not in msk.accepts_scores:
        raise CompositionError(
            f"estimator {est.name!r} produces {est.produces!r} scores but mask {msk.name!r} accepts "
            f"{sorted(msk.accepts_scores)}. Fix: use a mask that accepts {est.produces!r} scores "
            f"({alternatives('mask', lambda c: est.produces in c.accepts_scores)}) or an estimator producing "
            f"{sorted(msk.accepts_scores)} ({alternatives('estimator', lambda c: c.produces in msk.accepts_scores)})")
    if msk.needs_budget and bud is None:
        raise CompositionError(f"mask {msk.name!r} needs a budget but none was given. Fix: pass budget=... "
                               f"(available: {alternatives('budget', lambda c: c.produces in msk.accepts_budgets)})")
    if bud is not None:
        if msk.needs_budget and bud.produces not in msk.accepts_budgets:
            raise CompositionError(
                f"budget {bud.name!r} produces {bud.produces!r} budgets but mask {msk.name!r} accepts "
                f"{sorted(msk.accepts_budgets)}. Fix: use a mask accepting {bud.produces!r} "
                f"({alternatives('mask', lambda c: bud.produces in c.accepts_budgets)}) or a budget producing "
                f"{sorted(msk.accepts_budgets)} ({alternatives('budget', lambda c: c.produces in msk.accepts_budgets)})")
        if not msk.needs_budget:
            raise CompositionError(f"mask {msk.name!r} takes no budget but budget {bud.name!r} was given. "
                                   "Fix: pass budget=None")
        if bud.needs_scores and est is None:
            raise CompositionError(f"budget {bud.name!r} needs block scores but no estimator was given. Fix: pass "
                                   f"estimator=... (available: {alternatives('estimator', lambda c: c.produces in bud.accepts_scores)})")
        if bud.needs_scores and est is not None and est.produces not in bud.accepts_scores:
            raise CompositionError(f"estimator {est.name!r} produces {est.produces!r} scores but budget "
                                   f"{bud.name!r} accepts {sorted(bud.accepts_scores)}. Fix: pick another budget "
                                   f"({alternatives('budget', lambda c: not c.needs_scores or est.produces in c.accepts_scores)})")
    if est is not None and not msk.needs_scores and not (bud is not None and bud.needs_scores):
        raise CompositionError(f"estimator {est.name!r} was given but neither mask {msk.name!r} nor the budget uses "
                               "scores. Fix: pass estimator=None")
