"""``flex``: torch FlexAttention run on the layout (``BlockLayout.to_flex_block_mask()``).

``compile=True`` (default) runs ``torch.compile(flex_attention)`` (compiled once per process; new lengths
recompile, as FlexAttention does) and needs CUDA. ``compile=False`` runs FlexAttention's eager, unfused
path, which materialises the scores: for tests on CPU, never for speed. Priority 50, below ``triton``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings
from typing import Any, Callable, ClassVar

import attrs
import torch
from torch import Tensor

from sparsekit import AttentionProblem, BlockLayout, Capabilities, ConfigError, Kernel, UnsupportedError
from sparsekit.hookspecs import hookimpl
from sparsekit.stages import capability_reasons

#: configurations that failed to compile in this process -> the reason, refused from then on
_FAILED: dict[tuple, str] = {}


def _bool(inst: object, attr: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attr.name}={value!r} is not allowed (allowed: True or False). Fix: pass "
                          f"{attr.name}={attr.default!r}")


@functools.lru_cache(maxsize=None)
def compiled_flex_attention() -> Callable[..., Tensor]:
    """``torch.compile(flex_attention)``, built once per process."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _no_silent_eager_fallback() -> Any:
    """Dynamo config for the compiled call: more recompiles allowed (64, every new length/dtype/GQA ratio
    compiles anew) and an error, not a silent eager fallback, past the limit. Eager FlexAttention ignores
    the block tables (dense attention under the ``mask_mod``): falling back would return wrong results."""
    import torch._dynamo.config as dc

    for names in (("recompile_limit", "fail_on_recompile_limit_hit"), ("cache_size_limit", "fail_on_cache_limit_hit")):
        try:
            return dc.patch(**{names[0]: max(64, getattr(dc, names[0])), names[1]: True})
        except (AttributeError, KeyError):
            continue
    return contextlib.nullcontext()


def _config_key(problem: AttentionProblem, v: Tensor) -> tuple:
    return (problem.device.type, problem.q.dtype, problem.D, v.shape[-1], problem.group_size,
            problem.block_q, problem.block_k, problem.Nq < 128)


def _kernel_options(problem: AttentionProblem) -> dict[str, Any] | None:
    """Tile sizes dividing small layout blocks (the default tiles, e.g. 128x64, must divide the block size)."""
    if problem.block_q >= 128 and problem.block_k >= 128:
        return None
    cap = 32 if problem.q.dtype == torch.float32 else 64
    return {"BLOCK_M": min(problem.block_q, cap), "BLOCK_N": min(problem.block_k, cap)}


def _eager_block_mask(block_mask: Any, layout: BlockLayout) -> Any:
    """The same BlockMask with the layout folded into its ``mask_mod``.

    FlexAttention's eager path (``math_attention``) ignores the block tables and applies only ``mask_mod``
    to every (query, key) pair, so without this it would compute dense attention. The dense block table
    ``[B, Hq, nQb, nKb]`` is fine at the sizes eager mode is for (tests)."""
    from torch.nn.attention.flex_attention import BlockMask

    keep = layout.to_dense()
    inner, bq, bk = block_mask.mask_mod, layout.block_q, layout.block_k

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return inner(b, h, q_idx, kv_idx) & keep[b, h, q_idx // bq, kv_idx // bk]

    return BlockMask.from_kv_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks,
                                    block_mask.full_kv_indices, BLOCK_SIZE=block_mask.BLOCK_SIZE, mask_mod=mask_mod,
                                    seq_lengths=block_mask.seq_lengths)


@attrs.frozen
class FlexKernel(Kernel):
    """FlexAttention on the layout: full blocks without a mask, diagonal/ragged blocks with a ``mask_mod``
    (bottom-right causal, per-sequence lengths); GQA through ``enable_gqa=True`` (K/V not repeated)."""

    name: ClassVar[str] = "flex"
    description: ClassVar[str] = "torch FlexAttention from the layout (compiled on CUDA; eager on CPU for tests)"
    priority: ClassVar[int] = 50
    capabilities: ClassVar[Capabilities] = Capabilities(
        dtypes=(torch.bfloat16, torch.float16, torch.float32), devices=("cuda",))

    compile: bool = attrs.field(default=True, validator=_bool)

    def not_supported_reasons(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout | None) -> list[str]:
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return [f"torch {torch.__version__} has no FlexAttention (torch.nn.attention.flex_attention): upgrade "
                    "torch (>= 2.5), or use kernel='triton' or 'torch'"]
        caps = self.capabilities if self.compile else attrs.evolve(self.capabilities, devices=("cuda", "cpu"))
        reasons = [r for r in capability_reasons(caps, problem, v, repr(self.name)) if not r.startswith("device=")]
        dev = problem.device.type
        if dev not in caps.devices:
            eager = " (on cpu only compile=False runs: eager and unfused, for tests)" if dev == "cpu" else ""
            eager_fix = ", build with kernel='flex(compile=False)' (slow, tests)" if dev == "cpu" else ""
            reasons.append(f"device={dev} with compile={self.compile} (supported by 'flex': cuda{eager}): move tensors "
                           f"to a GPU{eager_fix}, or use kernel='torch' (runs anywhere)")
        if self.compile and problem.D < 16:
            reasons.append(f"head_dim={problem.D} (supported by compiled 'flex': >= 16): pad the head dim, or use "
                           "kernel='torch'")
        if self.compile and (why := _FAILED.get(_config_key(problem, v))):
            reasons.append(why)
        return reasons

    def forward(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout) -> Tensor:
        block_mask = layout.to_flex_block_mask()
        kw: dict[str, Any] = {"block_mask": block_mask, "scale": problem.scale,
                              "enable_gqa": problem.group_size > 1}
        if not self.compile:
            from torch.nn.attention import flex_attention as fa

            kw["block_mask"] = _eager_block_mask(block_mask, layout)
            # forward only: skip the Dynamo trace that eager FlexAttention does for every new shape (seconds
            # each); torch's flag (meant for debugging mask_mods) calls the same eager math directly
            saved = fa._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
            fa._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = not torch.is_grad_enabled() or not (
                problem.q.requires_grad or problem.k.requires_grad or v.requires_grad)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
                    return fa.flex_attention(problem.q, problem.k, v, **kw)
            finally:
                fa._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = saved
        options = _kernel_options(problem)
        if options is not None:
            kw["kernel_options"] = options
        try:
            with _no_silent_eager_fallback():
                return compiled_flex_attention()(problem.q, problem.k, v, **kw)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a compile failure becomes a refusal with its reason
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "power of 2" in str(exc):
                what = (f"GQA group size={problem.group_size} (compiled FlexAttention in torch {torch.__version__} "
                        "needs a power of two here)")
            elif "recompile" in str(exc).lower() or "cache_size" in str(exc).lower():
                what = "torch.compile's recompile limit was hit by FlexAttention in this process"
            else:
                what = f"FlexAttention failed to compile for {problem.describe()}"
            reason = f"{what}: {type(exc).__name__}: {text[:300]}; use kernel='triton' or kernel='torch'"
            _FAILED[_config_key(problem, v)] = reason
            raise UnsupportedError(f"kernel 'flex' cannot run {problem.describe()}:\n  - {reason}") from exc


@hookimpl
def sparsekit_register_kernels(register: Callable[[type], None]) -> None:
    register(FlexKernel)
