"""``sdpa``: dense attention through ``torch.nn.functional.scaled_dot_product_attention`` (the dense baseline).

It runs only *full* layouts (every visible block kept, e.g. ``mask="dense"``): it computes dense attention,
so running it on a sparse layout would silently ignore the layout. Its priority (150) is above ``triton``
(100): ``auto`` can only pick it for a full layout, and there torch's fused dense kernels (cuDNN, FA2) are
the fastest correct choice (ANCHORS.md: cuDNN 14.7 ms vs 23.0 ms for FlexAttention on a full layout, 32K).
It declares ``dense = True`` and also runs with ``layout=None``: the pipeline's ``dense_above`` fallback uses
it without building a layout.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from sparsekit import AttentionProblem, BlockLayout, Capabilities, Kernel
from sparsekit.hookspecs import hookimpl


def layout_sparsity_reason(problem: AttentionProblem, layout: BlockLayout) -> str | None:
    """``None`` if ``layout`` keeps every visible block of ``problem``, else a sentence saying why not.

    A row with fewer slots than the most blocks any q-block can see is decided on the host; otherwise the
    counts are compared with the visible counts on the device (one sync).
    """
    if problem.is_varlen:
        max_visible = max(-(-kl // problem.block_k) for kl in problem.k_len_list)
    else:
        max_visible = problem.nKb
    fix = ("'sdpa' computes dense attention and runs only full layouts (every visible block kept): build with "
           "mask='dense' (preset 'dense') to use it, or run this layout with kernel='triton', 'flex' or 'torch'")
    geometry = (problem.block_q, problem.block_k, problem.Nq, problem.Nk)
    if (layout.block_q, layout.block_k, layout.Nq, layout.Nk) != geometry:
        return (f"layout geometry blocks={layout.block_q}x{layout.block_k} Nq={layout.Nq} Nk={layout.Nk} differs "
                f"from the problem's ({problem.block_q}x{problem.block_k}, {problem.Nq}, {problem.Nk}): {fix}")
    if layout.max_k < max_visible:
        return (f"layout is block-sparse (max_k={layout.max_k} < {max_visible} visible kv-blocks of the last "
                f"q-block): {fix}")
    _, _, visible = problem.block_bounds()
    counts = layout.kv_counts.long()
    if not bool((counts == visible[:, None, :]).all()):
        kept, total = int(counts.sum()), int(visible.sum()) * problem.Hq
        return (f"layout is block-sparse (keeps {kept} of {total} visible blocks, "
                f"density={kept / max(total, 1):.3f}): {fix}")
    return None


def _sdpa(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None) -> Tensor:
    """One dense call on full-length sequences; bottom-right causal when ``Nq != Nk``; GQA without repeating KV."""
    Nq, Nk = q.shape[2], k.shape[2]
    kw: dict = {"scale": scale}
    if q.shape[1] != k.shape[1]:
        kw["enable_gqa"] = True
    if causal and Nq != Nk:
        from torch.nn.attention.bias import causal_lower_right

        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Nq, Nk), **kw)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **kw)


@attrs.frozen
class SdpaKernel(Kernel):
    """Dense attention with torch SDPA (cuDNN / FlashAttention / memory-efficient / math, torch decides).

    Causal masks are bottom-right aligned (``causal_lower_right`` when ``Nq < Nk``); GQA through
    ``enable_gqa=True`` (K/V are not repeated by us); variable lengths by one call per trimmed sequence,
    padded rows are 0. Refuses any layout that is not full; ``layout=None`` means dense attention (``dense``).
    """

    name: ClassVar[str] = "sdpa"
    description: ClassVar[str] = ("dense torch SDPA (cuDNN/FA2); runs full layouts (mask='dense') and the dense_above "
                                  "fallback")
    priority: ClassVar[int] = 150
    dense: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(
        dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), devices=("cpu", "cuda", "mps", "xpu"))

    def not_supported_reasons(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout | None) -> list[str]:
        reasons = super().not_supported_reasons(problem, v, layout)
        if layout is not None:
            why = layout_sparsity_reason(problem, layout)
            if why is not None:
                reasons.append(why)
        return reasons

    def forward(self, problem: AttentionProblem, v: Tensor, layout: BlockLayout | None) -> Tensor:
        q, k = problem.q, problem.k
        if not problem.is_varlen:
            return _sdpa(q, k, v, problem.causal, problem.scale)
        out = q.new_zeros(problem.B, problem.Hq, problem.Nq, v.shape[-1])
        for b, (ql, kl) in enumerate(zip(problem.q_len_list, problem.k_len_list)):
            out[b : b + 1, :, :ql] = _sdpa(q[b : b + 1, :, :ql], k[b : b + 1, :, :kl], v[b : b + 1, :, :kl],
                                           problem.causal, problem.scale)
        return out


@hookimpl
def sparsekit_register_kernels(register: Callable[[type], None]) -> None:
    register(SdpaKernel)
