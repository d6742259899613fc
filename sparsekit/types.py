"""Data passed between the planning stages: block scores and budgets."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from .errors import PluginError

ScoreKind = Literal["mass", "rank"]
"""``mass``: scores are (approximations of) softmax probability mass per block, rows of a q-block
comparable to a threshold; ``rank``: only their order within a row means something."""

BudgetKind = Literal["count", "mass"]
"""``count``: kv-blocks to keep per (batch, head, q-block); ``mass``: the fraction of the row's
score mass to keep (cumulative threshold)."""


@attrs.frozen(eq=False)
class BlockScores:
    """Estimated importance of each (q-block, kv-block) pair.

    ``scores`` is float32 ``[B, G, nQb, nKb]``; query head ``h`` reads group ``h // (Hq // G)``.
    Blocks a q-block cannot see (causal future, padding) hold ``-inf``.
    """

    scores: Tensor
    kind: ScoreKind = "rank"
    info: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.scores.dim() != 4 or self.scores.dtype != torch.float32:
            raise PluginError(f"BlockScores.scores must be float32 [B, G, nQb, nKb], got "
                              f"{self.scores.dtype} {tuple(self.scores.shape)}: fix the estimator")

    @property
    def groups(self) -> int:
        return self.scores.shape[1]

    def per_head(self, Hq: int) -> Tensor:
        """Scores expanded to query heads, ``[B, Hq, nQb, nKb]`` (a view, no copy)."""
        B, G, nQb, nKb = self.scores.shape
        if Hq % G:
            raise PluginError(f"BlockScores has G={G} groups, which does not divide Hq={Hq}: fix the estimator")
        return self.scores[:, :, None].expand(B, G, Hq // G, nQb, nKb).reshape(B, Hq, nQb, nKb)

    @staticmethod
    def stack(parts: list[BlockScores], nQb: int, nKb: int) -> BlockScores:
        """Stack per-sequence scores ``[1, G, nQb_b, nKb_b]`` into ``[B, G, nQb, nKb]`` padded with -inf."""
        G = parts[0].scores.shape[1]
        out = parts[0].scores.new_full((len(parts), G, nQb, nKb), float("-inf"))
        for b, p in enumerate(parts):
            _, _, nq, nk = p.scores.shape
            out[b, :, :nq, :nk] = p.scores[0]
        return BlockScores(out, parts[0].kind, _stack_info([p.info for p in parts]))


@attrs.frozen(eq=False)
class Budget:
    """How much each (batch, head, q-block) keeps.

    ``kind == "count"``: ``value`` int32 ``[B, Hq, nQb]`` kv-blocks to keep.
    ``kind == "mass"``: ``value`` float32 ``[B, Hq, nQb]`` fraction of score mass to keep, in (0, 1].
    ``info`` carries what the budgeter wants to report (e.g. per-head ratios ``[B, Hq]``).
    """

    kind: BudgetKind
    value: Tensor
    info: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        want = torch.int32 if self.kind == "count" else torch.float32
        if self.kind not in ("count", "mass") or self.value.dim() != 3 or self.value.dtype != want:
            raise PluginError(f"Budget(kind={self.kind!r}) needs value {want} [B, Hq, nQb], got "
                              f"{self.value.dtype} {tuple(self.value.shape)}: fix the budgeter")

    @staticmethod
    def stack(parts: list[Budget], nQb: int) -> Budget:
        """Stack per-sequence budgets ``[1, Hq, nQb_b]`` into ``[B, Hq, nQb]`` padded with 0."""
        Hq = parts[0].value.shape[1]
        out = parts[0].value.new_zeros((len(parts), Hq, nQb))
        for b, p in enumerate(parts):
            out[b, :, : p.value.shape[2]] = p.value[0]
        return Budget(parts[0].kind, out, _stack_info([p.info for p in parts]))


def _stack_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-sequence ``info`` dicts: tensors of equal trailing shape are concatenated along the batch
    dim; values equal in every sequence are kept once; anything else becomes a list, one entry per sequence."""
    out: dict[str, Any] = {}
    for key in infos[0]:
        vals = [i.get(key) for i in infos]
        first = vals[0]
        if isinstance(first, Tensor) and all(isinstance(x, Tensor) and x.shape[1:] == first.shape[1:] for x in vals):
            out[key] = torch.cat(vals, dim=0)  # type: ignore[arg-type]
        elif not isinstance(first, Tensor) and all(type(x) is type(first) and x == first for x in vals):
            out[key] = first
        else:
            out[key] = vals
    return out
