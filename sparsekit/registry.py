"""Plugin loading (pluggy + entry points) and the registry of stages and presets."""

from __future__ import annotations

import difflib
import importlib.metadata
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError
from .stages import STAGE_BASES, STAGE_KINDS, Stage, StageKind


@attrs.frozen
class StageEntry:
    kind: StageKind
    name: str
    cls: type[Stage]
    plugin: str


@attrs.frozen
class PresetEntry:
    name: str
    config: dict[str, Any]
    plugin: str
    description: str = ""


@attrs.frozen
class PluginFailure:
    plugin: str
    error: str


class Registry:
    """Stages and presets registered by plugins.

    ``Registry()`` loads every plugin of the ``sparsekit`` entry-point group; ``Registry(entry_points=False)``
    starts empty (tests, notebooks) and ``register_plugin(obj)`` adds any object or module with hookimpls.
    A plugin whose import or hook fails is recorded in ``failures`` and does not stop the others.
    """

    def __init__(self, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.stages: dict[StageKind, dict[str, StageEntry]] = {k: {} for k in STAGE_KINDS}
        self.presets: dict[str, PresetEntry] = {}
        self.failures: list[PluginFailure] = []
        self.sources: dict[str, str] = {}  # plugin name -> where it came from
        if entry_points:
            self.load_entry_points()

    # loading ---------------------------------------------------------------------------------
    def load_entry_points(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            if self.pm.has_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                self.failures.append(PluginFailure(ep.name, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}"))
                continue
            self.register_plugin(obj, name=ep.name, source=f"entry point {ep.value} ({dist})")

    def register_plugin(self, plugin: object, name: str | None = None, source: str = "registered in code") -> str:
        """Register an object or module carrying hookimpls and run its registration hooks now."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered ({self.sources.get(name)}). "
                              "Fix: register it under another name")
        if self.pm.is_registered(plugin):
            raise PluginError(f"this plugin object is already registered as {self.pm.get_name(plugin)!r}; cannot add "
                              f"it again as {name!r}. Fix: unregister it first, or register a different object")
        self.pm.register(plugin, name=name)
        self.sources[name] = source
        try:
            for kind, hook in hookspecs.HOOKS.items():
                for impl in getattr(self.pm.hook, hook).get_hookimpls():
                    if impl.plugin_name == name:
                        impl.function(register=lambda cls, _k=kind: self.add_stage(_k, cls, name))
            for impl in self.pm.hook.sparsekit_register_presets.get_hookimpls():
                if impl.plugin_name == name:
                    impl.function(register=lambda n, config, description="": self.add_preset(n, config, name, description))
        except PluginError:
            self.unregister(name)
            raise
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
            self.unregister(name)
            self.failures.append(PluginFailure(name, f"registration failed: {type(exc).__name__}: {exc}"))
        return name

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it registered."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        for table in self.stages.values():
            for key in [k for k, e in table.items() if e.plugin == name]:
                del table[key]
        for key in [k for k, e in self.presets.items() if e.plugin == name]:
            del self.presets[key]
        self.sources.pop(name, None)

    def add_stage(self, kind: StageKind, cls: type, plugin: str) -> None:
        base = STAGE_BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {kind}, but it is not a subclass of "
                              f"sparsekit.{base.__name__}. Fix: subclass {base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"plugin {plugin!r} registered {cls.__name__} with name={name!r} (allowed: an "
                              "identifier such as 'my_estimator'). Fix: set the class attribute `name`")
        if name in self.stages[kind]:
            other = self.stages[kind][name]
            raise PluginError(f"duplicate {kind} name {name!r}: registered by plugin {other.plugin!r} "
                              f"({other.cls.__module__}.{other.cls.__name__}) and by plugin {plugin!r} "
                              f"({cls.__module__}.{cls.__name__}). Fix: rename one of them")
        self.stages[kind][name] = StageEntry(kind, name, cls, plugin)

    def add_preset(self, name: str, config: dict[str, Any], plugin: str, description: str = "") -> None:
        if name in self.presets:
            raise PluginError(f"duplicate preset name {name!r}: registered by plugin {self.presets[name].plugin!r} "
                              f"and by plugin {plugin!r}. Fix: rename one of them")
        self.presets[name] = PresetEntry(name, dict(config), plugin, description)

    # lookup ----------------------------------------------------------------------------------
    def get(self, kind: StageKind, name: str) -> StageEntry:
        table = self.stages[kind]
        if name not in table:
            raise ConfigError(unknown_message(kind, name, list(table), self.failures))
        return table[name]

    def preset(self, name: str) -> PresetEntry:
        if name not in self.presets:
            raise ConfigError(unknown_message("preset", name, list(self.presets), self.failures))
        return self.presets[name]

    def names(self, kind: StageKind) -> list[str]:
        return sorted(self.stages[kind])


def unknown_message(kind: str, name: str, available: list[str], failures: list[PluginFailure] = ()) -> str:  # type: ignore[assignment]
    close = difflib.get_close_matches(name, available, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    broken = f" (plugins that failed to load: {', '.join(f.plugin for f in failures)})" if failures else ""
    return (f"unknown {kind} {name!r} (available: {', '.join(sorted(available)) or 'none'}){broken}.{hint} "
            f"Fix: use one of the available names, or install the plugin that provides it")


_DEFAULT: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module in the process-wide registry (notebooks, scripts)."""
    return get_registry().register_plugin(plugin, name=name)
