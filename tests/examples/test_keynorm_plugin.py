"""The example third-party plugin ``examples/sparsekit-keynorm``.

(a) registered programmatically in a throwaway registry: the ``keynorm`` estimator against a
brute-force loop over its definition, layouts, options, and the conformance oracle (full budget
equals dense attention); (b) installed: found through the ``sparsekit`` entry-point group.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
from pathlib import Path

import pytest
import torch

import sparsekit
import sparsekit.plugins.common
import sparsekit.plugins.dense
from sparsekit.info import report

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sparsekit-keynorm"
INSTALL_HINT = "sparsekit-keynorm is not installed: run `pip install -e examples/sparsekit-keynorm`"

try:  # installed (editable or not), else straight from the source folder
    import sparsekit_keynorm
except ImportError:
    sys.path.insert(0, str(EXAMPLE))
    import sparsekit_keynorm


@pytest.fixture
def reg() -> sparsekit.Registry:
    """A registry without entry points: the built-ins keynorm needs plus the plugin module itself."""
    r = sparsekit.Registry(entry_points=False)
    r.register_plugin(sparsekit.plugins.common, name="common")  # fixed budget, topk mask, torch kernel
    r.register_plugin(sparsekit.plugins.dense, name="dense")  # dense mask, as a second opinion
    r.register_plugin(sparsekit_keynorm, name="keynorm")
    assert not r.failures
    return r


def qkv(B: int, Hq: int, Hkv: int, Nq: int, Nk: int, D: int, seed: int = 0,
        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen, dtype=dtype)
    # keys with uneven norms, so the ranking is not a coin toss
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=dtype) * torch.rand(B, Hkv, Nk, 1, generator=gen,
                                                                             dtype=dtype).mul(3)
    v = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=dtype)
    return q, k, v


def brute_force_scores(k: torch.Tensor, Nq: int, g: int, block_q: int, block_k: int, causal: bool = True,
                       q_lens: list[int] | None = None, k_lens: list[int] | None = None) -> torch.Tensor:
    """The definition, one element at a time: score[b, grp, i, j] = max over valid keys t of kv-block j of
    ||mean of the group's KV heads at t||_2 if some valid row of q-block i may see some key of block j
    (bottom-right causal), else -inf."""
    B, Hkv, Nk, D = k.shape
    nQb, nKb = math.ceil(Nq / block_q), math.ceil(Nk / block_k)
    per = Hkv // g
    out = torch.full((B, g, nQb, nKb), float("-inf"), dtype=torch.float64)
    for b in range(B):
        ql = q_lens[b] if q_lens else Nq
        kl = k_lens[b] if k_lens else Nk
        for grp in range(g):
            for i in range(nQb):
                rows = range(i * block_q, min((i + 1) * block_q, ql))
                for j in range(nKb):
                    keys = [t for t in range(j * block_k, min((j + 1) * block_k, kl))]
                    visible = any(not causal or t <= kl - ql + r for r in rows for t in keys)
                    if not visible:
                        continue
                    best = float("-inf")
                    for t in keys:
                        mean = sum(k[b, grp * per + h, t].double() for h in range(per)) / per
                        best = max(best, float(mean.norm()))
                    out[b, grp, i, j] = best
    return out


# (a) programmatic registration ----------------------------------------------------------------
def test_registered_under_the_plugin_name(reg):
    assert reg.get("estimator", "keynorm").plugin == "keynorm"
    assert reg.preset("keynorm").plugin == "keynorm"
    assert reg.get("estimator", "keynorm").cls.produces == "rank"


@pytest.mark.parametrize("shape", [
    # B, Hq, Hkv, Nq, Nk, D, g
    (1, 4, 4, 96, 96, 16, 1),     # MHA, fresh prefill, Nq not a multiple of the block
    (2, 8, 4, 70, 150, 16, 2),    # GQA, chunked prefill (Nq < Nk), g = 2 groups
    (1, 6, 2, 64, 64, 8, 2),      # g == Hkv
], ids=lambda s: "B{}-Hq{}-Hkv{}-Nq{}-Nk{}-D{}-g{}".format(*s))
def test_scores_equal_the_definition(reg, shape):
    B, Hq, Hkv, Nq, Nk, D, g = shape
    q, k, _ = qkv(B, Hq, Hkv, Nq, Nk, D)
    attn = sparsekit.build(estimator=f"keynorm(g={g})", budget="fixed(ratio=0.25)", registry=reg,
                           block_q=32, block_k=32)
    scores = attn.plan(q, k).scores
    assert scores.kind == "rank" and scores.scores.dtype == torch.float32
    assert scores.scores.shape == (B, g, math.ceil(Nq / 32), math.ceil(Nk / 32))
    want = brute_force_scores(k, Nq, g, 32, 32)
    got = scores.scores.double()
    assert torch.equal(torch.isinf(got), torch.isinf(want))  # visibility matches exactly
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_scores_with_variable_lengths_and_non_causal(reg):
    q, k, _ = qkv(2, 4, 2, 80, 120, 8, seed=1)
    q_lens, k_lens = [80, 33], [120, 57]
    attn = sparsekit.build(estimator="keynorm(g=2)", budget="fixed(ratio=0.25)", registry=reg, block_q=16,
                           block_k=16)
    for causal in (True, False):
        got = attn.plan(q, k, causal=causal, q_lens=torch.tensor(q_lens), k_lens=torch.tensor(k_lens)).scores
        want = brute_force_scores(k, 80, 2, 16, 16, causal, q_lens, k_lens)
        assert torch.equal(torch.isinf(got.scores), torch.isinf(want))
        torch.testing.assert_close(got.scores.double(), want, rtol=1e-5, atol=1e-5)


def test_output_shape_and_layout(reg):
    q, k, v = qkv(2, 8, 2, 256, 256, 16)
    attn = sparsekit.build(estimator="keynorm", budget="fixed(ratio=0.25)", registry=reg, block_q=32, block_k=32,
                           validate=True)
    assert attn.name == "keynorm(g=1)+fixed(blocks=None,ratio=0.25)+topk(sink=True,diagonal=True)+auto"
    out, plan = attn(q, k, v, return_plan=True)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    layout = plan.layout.validate()
    assert layout.kv_counts.shape == (2, 8, 8)
    # top-k by norm: every row keeps the best ceil(0.25 * visible) blocks plus sink and diagonal
    visible = torch.arange(1, 9)
    want = torch.maximum(torch.ceil(visible * 0.25).long(), torch.where(visible > 1, 2, 1))
    assert torch.equal(layout.kv_counts.long(), want.expand(2, 8, 8))
    assert 0 < plan.density < 1
    # query independence: other queries, same keys -> same layout
    other = attn.plan(torch.randn_like(q), k).layout
    assert torch.equal(other.kv_indices, layout.kv_indices)


def test_top_blocks_are_the_heaviest(reg):
    """Plant one huge key in block 5: with one block per row (no forced sink/diagonal), every q-block that
    sees block 5 keeps exactly it."""
    q, k, v = qkv(1, 2, 1, 256, 256, 16)
    k[:, :, 5 * 32 + 7] *= 100
    plan = sparsekit.build(estimator="keynorm", budget="fixed(blocks=1,ratio=None)",
                           mask="topk(sink=False,diagonal=False)", registry=reg, block_q=32, block_k=32).plan(q, k)
    dense = plan.layout.to_dense()  # [B, H, nQb, nKb]
    assert dense[..., 5:, 5].all() and plan.layout.kv_counts[..., 5:].eq(1).all()


def test_preset_by_name(reg):
    attn = sparsekit.build("keynorm", registry=reg)
    assert attn.config["estimator"] == {"name": "keynorm", "g": 1}
    assert attn.config["budget"] == {"name": "fixed", "blocks": None, "ratio": 0.25}
    q, k, v = qkv(1, 4, 2, 384, 384, 16)
    assert attn(q, k, v).shape == q.shape


def test_options_are_validated(reg):
    with pytest.raises(sparsekit.ConfigError, match=r"g=0 is not allowed"):
        sparsekit.build(estimator="keynorm(g=0)", budget="fixed", registry=reg)
    with pytest.raises(sparsekit.ConfigError, match=r"did you mean 'g'"):
        sparsekit.build(estimator="keynorm(gg=2)", budget="fixed", registry=reg)
    q, k, v = qkv(1, 6, 3, 64, 64, 8)
    with pytest.raises(sparsekit.InputError, match=r"g=2 does not divide the 3 KV heads .*keynorm\(g=1\)"):
        sparsekit.build(estimator="keynorm(g=2)", budget="fixed", registry=reg)(q, k, v)


class _Copycat:
    """Another plugin registering the same estimator class under the same name."""

    @sparsekit.hookimpl
    def sparsekit_register_estimators(self, register):
        register(sparsekit_keynorm.KeyNormEstimator)


def test_a_second_keynorm_names_both_owners(reg):
    with pytest.raises(sparsekit.PluginError, match=r"duplicate estimator name 'keynorm'.*'keynorm'.*'copycat'"):
        reg.register_plugin(_Copycat(), name="copycat")
    assert "copycat" not in reg.sources and reg.get("estimator", "keynorm").plugin == "keynorm"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 8, 2, 200, 200, 32), (1, 4, 4, 100, 260, 16)], ids=["prefill", "chunked"])
def test_full_budget_equals_dense(reg, shape, dtype):
    """Conformance: with ratio=1 every visible block is kept, so the output is dense causal attention,
    within twice the error plain torch makes in the same dtype against float64."""
    q, k, v = qkv(*shape, dtype=dtype)
    attn = sparsekit.build(estimator="keynorm", budget="fixed(ratio=1.0)", registry=reg, block_q=32, block_k=32)
    out, plan = attn(q, k, v, return_plan=True)
    assert plan.density == 1.0
    assert torch.equal(plan.layout.to_dense(), sparsekit.BlockLayout.full(plan.problem).to_dense())
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double())
    naive = sparsekit.dense_attention(q, k, v, compute_dtype=dtype)
    tol = 2 * float((naive.double() - ref).abs().max()) + 1e-6
    assert float((out.double() - ref).abs().max()) <= tol
    # and through the dense mask, the same layout gives the same output bit for bit
    dense = sparsekit.build(estimator=None, budget=None, mask="dense", registry=reg, block_q=32, block_k=32)
    assert torch.equal(dense(q, k, v), out)


# (b) installed through the entry point --------------------------------------------------------
def _installed() -> bool:
    try:
        importlib.metadata.distribution("sparsekit-keynorm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason=INSTALL_HINT)
def test_installed_plugin_loads_through_the_entry_point():
    eps = [ep for ep in importlib.metadata.entry_points(group="sparsekit") if ep.name == "keynorm"]
    assert [ep.value for ep in eps] == ["sparsekit_keynorm"]
    assert eps[0].dist is not None and eps[0].dist.name == "sparsekit-keynorm"

    reg = sparsekit.Registry()  # entry points only, as an end user gets it
    assert not [f for f in reg.failures if f.plugin == "keynorm"], reg.failures
    assert reg.get("estimator", "keynorm").plugin == "keynorm"
    assert reg.preset("keynorm").plugin == "keynorm"
    assert "sparsekit-keynorm" in reg.sources["keynorm"]
    rows = {r["name"]: r for r in report(reg)["stages"]["estimator"]}  # what `sparsekit list` prints
    assert rows["keynorm"]["plugin"] == "keynorm" and rows["keynorm"]["options"] == {"g": 1}

    attn = sparsekit.build("keynorm")  # process-wide registry, by preset name
    q, k, v = qkv(1, 4, 2, 256, 256, 16)
    plan = attn.plan(q, k)
    plan.layout.validate()
    assert plan.scores.scores.shape == (1, 1, 2, 2)
    out = sparsekit.build("keynorm", kernel="torch")(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()
