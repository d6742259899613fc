"""sparsekit: block-sparse attention for long-context prefill, composed from plugin stages.

>>> import sparsekit, torch
>>> attn = sparsekit.build("proxyattn")               # proxy + dynamic + topk + best kernel
>>> out = attn(q, k, v)                                # q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D]
>>> plan = attn.plan(q, k)                             # layout, density, budgets, timings
"""

from __future__ import annotations

from .build import build, check_composition, from_config
from .config import dump_config, load_config
from .errors import (CompositionError, ConfigError, InputError, PluginError, SparsekitError, UnsupportedError)
from .hookspecs import hookimpl
from .layout import BlockLayout
from .metrics import attention_recall, relative_error
from .pipeline import Plan, SparseAttention
from .problem import AttentionProblem
from .reference import dense_attention
from .registry import Registry, get_registry, register_plugin
from .stages import Budgeter, Capabilities, Estimator, Kernel, MaskBuilder, Stage
from .types import BlockScores, Budget

__version__ = "0.1.0"

__all__ = [
    "AttentionProblem", "BlockLayout", "BlockScores", "Budget", "Budgeter", "Capabilities", "CompositionError",
    "ConfigError", "Estimator", "InputError", "Kernel", "MaskBuilder", "Plan", "PluginError", "Registry",
    "SparseAttention", "SparsekitError", "Stage", "UnsupportedError", "attention_recall", "build",
    "check_composition", "dense_attention", "dump_config", "from_config", "get_registry", "hookimpl",
    "load_config", "register_plugin", "relative_error", "__version__",
]
