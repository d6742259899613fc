"""Stage specifications and configuration files (dict <-> TOML round-trip)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)
PIPELINE_KEYS = ("estimator", "budget", "mask", "kernel")
SCALAR_KEYS = ("block_q", "block_k", "check_finite", "validate", "dense_above", "overlap_budget")


def parse_spec(spec: Any, what: str) -> dict[str, Any] | None:
    """Normalise a stage spec to ``{"name": ..., **options}`` (``None`` stays ``None``).

    Accepted: ``"proxy"``, ``"proxy(g=1,stride=4)"`` (the label form), ``{"name": "proxy", "stride": 4}``,
    or a dict of options without ``name`` (merged into a preset's stage by :func:`sparsekit.build`).
    """
    if spec is None:
        return None
    if isinstance(spec, dict):
        out = dict(spec)
        for key in out.pop(UNSET_KEY, []):
            out[key] = None
        return out
    if isinstance(spec, str):
        m = _SPEC.match(spec)
        if not m:
            raise ConfigError(f"{what}={spec!r} is not a stage name (allowed: 'name' or 'name(opt=value,...)'). "
                              f"Fix: e.g. {what}='proxy(stride=8)'")
        out: dict[str, Any] = {"name": m.group(1)}
        if m.group(2) and m.group(2).strip():
            try:
                call = ast.parse(f"f({m.group(2)})", mode="eval").body
                assert isinstance(call, ast.Call) and not call.args
                for kw in call.keywords:
                    assert kw.arg is not None
                    out[kw.arg] = ast.literal_eval(kw.value)
            except (SyntaxError, ValueError, AssertionError):
                raise ConfigError(f"{what}={spec!r}: options must be literal keyword arguments (allowed: "
                                  f"'name(opt=value,...)'). Fix: e.g. {what}='proxy(g=1,stride=4)'") from None
        return out
    stage_spec = getattr(spec, "spec", None)
    if callable(stage_spec):
        return stage_spec()
    raise ConfigError(f"{what}={spec!r} (allowed: a name string, a dict with 'name', a stage instance or None). "
                      f"Fix: pass {what}='name'")


def load_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read a configuration dict from a TOML file (or copy a dict)."""
    if isinstance(source, dict):
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in source.items()}
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config={str(path)!r} is not a file (allowed: a TOML file or a dict). Fix: check the path")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config={str(path)!r} is not valid TOML ({exc}). Fix: correct the file") from None
    unknown = [k for k in data if k not in PIPELINE_KEYS + SCALAR_KEYS + ("preset",)]
    if unknown:
        raise ConfigError(f"config {str(path)!r} has unknown keys {unknown} (allowed: "
                          f"{', '.join(PIPELINE_KEYS + SCALAR_KEYS + ('preset',))}). Fix: remove or rename them")
    return data


UNSET_KEY = "unset"
"""In a stage table, the options explicitly set to ``None`` (TOML has no null)."""


def dump_config(config: dict[str, Any]) -> str:
    """TOML text of a configuration dict: stages as tables, ``None`` stages omitted, options set to
    ``None`` listed under ``unset = [...]`` (read back by :func:`parse_spec`)."""
    import tomli_w

    clean: dict[str, Any] = {}
    for key, val in config.items():
        if val is None:
            continue
        if isinstance(val, dict):
            none = sorted(k for k, v in val.items() if v is None)
            val = {k: v for k, v in val.items() if v is not None}
            if none:
                val[UNSET_KEY] = none
        clean[key] = val
    return tomli_w.dumps(clean)
