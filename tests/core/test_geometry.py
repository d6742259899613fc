"""``sparsekit.layout.block_geometry``: kept once per geometry when there are no per-sequence lengths."""

from __future__ import annotations

import math

import pytest
import torch

from sparsekit import layout
from sparsekit.layout import block_geometry


def _by_definition(B, Nq, Nk, bq, bk, causal, q_lens=None, k_lens=None):
    """first / last / visible from the definition, one q-block at a time (bottom-right aligned)."""
    nQb = math.ceil(Nq / bq)
    first, last, visible = (torch.zeros(B, nQb, dtype=torch.long) for _ in range(3))
    for b in range(B):
        ql = Nq if q_lens is None else int(q_lens[b])
        kl = Nk if k_lens is None else int(k_lens[b])
        for i in range(nQb):
            r0, r1 = i * bq, min((i + 1) * bq, ql) - 1
            if r0 >= ql:
                last[b, i] = (kl - ql + r0 + bq - 1) // bk if kl - ql + r0 + bq - 1 < kl else (kl - 1) // bk
                first[b, i] = min(max((r0 + kl - ql) // bk, 0), int(last[b, i]))
                continue
            lst = min(r0 + bq - 1 + kl - ql, kl - 1) // bk
            last[b, i] = lst
            first[b, i] = min(max((r0 + kl - ql) // bk, 0), lst)
            visible[b, i] = lst + 1 if causal else math.ceil(kl / bk)
    return first, last, visible


@pytest.mark.parametrize("B, Nq, Nk, bq, bk, causal", [
    (1, 64, 64, 16, 16, True), (2, 300, 300, 16, 32, True), (1, 40, 1000, 16, 32, True), (2, 200, 150, 32, 16, False),
])
def test_full_geometry_is_kept_and_correct(monkeypatch, B, Nq, Nk, bq, bk, causal):
    monkeypatch.setattr(layout, "_FULL_GEOMETRY", {})
    cpu = torch.device("cpu")
    got = block_geometry(B, Nq, Nk, bq, bk, causal, None, None, cpu)
    again = block_geometry(B, Nq, Nk, bq, bk, causal, None, None, cpu)
    assert all(a is b for a, b in zip(got, again))  # the same tensors: computed once
    want = _by_definition(B, Nq, Nk, bq, bk, causal)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    other = block_geometry(B, Nq, Nk, bq, bk, not causal, None, None, cpu)  # another geometry: its own entry
    assert len(layout._FULL_GEOMETRY) == 2
    assert torch.equal(other[2], _by_definition(B, Nq, Nk, bq, bk, not causal)[2])


def test_geometry_with_lengths_is_not_kept(monkeypatch):
    monkeypatch.setattr(layout, "_FULL_GEOMETRY", {})
    lens = torch.tensor([300, 131])
    got = block_geometry(2, 300, 300, 16, 16, True, lens, lens, torch.device("cpu"))
    assert not layout._FULL_GEOMETRY
    assert torch.equal(got[2], _by_definition(2, 300, 300, 16, 16, True, lens, lens)[2])
    lens[1] = 77  # new lengths, same tensors: a fresh result
    assert torch.equal(block_geometry(2, 300, 300, 16, 16, True, lens, lens, torch.device("cpu"))[2],
                       _by_definition(2, 300, 300, 16, 16, True, lens, lens)[2])


def test_kept_geometries_are_bounded(monkeypatch):
    monkeypatch.setattr(layout, "_FULL_GEOMETRY", {})
    monkeypatch.setattr(layout, "_FULL_GEOMETRY_MAX", 3)
    for n in range(16, 16 * 8, 16):
        block_geometry(1, n, n, 16, 16, True, None, None, torch.device("cpu"))
    assert len(layout._FULL_GEOMETRY) == 3
    assert [k[1] for k in layout._FULL_GEOMETRY] == [80, 96, 112]
