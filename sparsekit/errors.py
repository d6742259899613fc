"""Errors raised by sparsekit. Every message names the argument, the value, what is allowed and the fix."""

from __future__ import annotations

from typing import Any


class SparsekitError(Exception):
    """Base class of every error sparsekit raises on purpose."""


class InputError(SparsekitError, ValueError):
    """A tensor or argument passed to an attention call is invalid."""


class ConfigError(SparsekitError, ValueError):
    """A stage name, option or configuration is invalid."""


class CompositionError(ConfigError):
    """Two stages cannot be composed (e.g. a mask that needs scores without an estimator)."""


class UnsupportedError(SparsekitError, RuntimeError):
    """No kernel (or not the chosen one) can run this problem; the message lists every reason."""


class PluginError(SparsekitError):
    """A plugin registered something invalid (duplicate name, bad stage class)."""


def invalid(arg: str, value: Any, allowed: str, fix: str, cls: type[SparsekitError] = InputError) -> SparsekitError:
    """Build an error that names the argument, its value, what is allowed and the fix."""
    return cls(f"{arg}={value!r} is not allowed (allowed: {allowed}). Fix: {fix}")
