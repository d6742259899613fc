"""``dense_above``: a plan at least this dense runs dense attention (a kernel declaring ``dense = True``, i.e.
``sdpa``) instead of its layout; below it, or when no dense kernel can run, the layout runs as planned."""

from __future__ import annotations

import warnings
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import Capabilities, ConfigError, Kernel, Registry, UnsupportedError, hookimpl
from sparsekit.plugins import common, sdpa_kernel, streaming
from sparsekit.plugins.sdpa_kernel import SdpaKernel

ATOL = 2e-5
# sinks + a 2-block local window of 16-token blocks: density ~0.4 at 200 tokens
STREAMING = "streaming(sink_blocks=1,local_blocks=2)"


def tensors(B, Hq, Hkv, Nq, Nk, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Nq, D, generator=g), torch.randn(B, Hkv, Nk, D, generator=g),
            torch.randn(B, Hkv, Nk, D, generator=g))


def sdpa_reference(q, k, v, causal=True, q_lens=None, k_lens=None):
    """Dense attention per trimmed sequence with torch SDPA (explicit bottom-right mask), padded rows 0."""
    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    out = q.new_zeros(B, Hq, Nq, v.shape[-1])
    for b in range(B):
        ql = int(q_lens[b]) if q_lens is not None else Nq
        kl = int(k_lens[b]) if k_lens is not None else Nk
        mask = None
        if causal:
            mask = torch.arange(kl)[None, :] <= (torch.arange(ql)[:, None] + (kl - ql))
        out[b : b + 1, :, :ql] = F.scaled_dot_product_attention(
            q[b : b + 1, :, :ql], k[b : b + 1, :, :kl], v[b : b + 1, :, :kl], attn_mask=mask, enable_gqa=True)
    return out


def build(**kw):
    return sparsekit.build(mask=STREAMING, block_q=16, block_k=16, **kw)


def test_below_the_threshold_the_layout_runs():
    q, k, v = tensors(1, 8, 2, 200, 200)
    attn = build(kernel="torch", dense_above=0.9)
    out, plan = attn(q, k, v, return_plan=True)
    assert 0 < plan.density < 0.9
    assert "dense_fallback" not in plan.info and plan.info["kernel"] == "torch" == plan.info["kernel_name"]
    assert "dense_fallback" not in plan.summary()
    assert torch.equal(out, build(kernel="torch")(q, k, v))  # the same sparse computation
    assert float((out - sdpa_reference(q, k, v)).abs().max()) > 1e-2  # and the layout is really sparse


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_at_the_threshold_dense_attention_runs_gqa4(kernel):
    q, k, v = tensors(2, 8, 2, 200, 200, seed=1)
    density = build().plan(q, k).density
    attn = build(kernel=kernel, dense_above=density)  # density >= dense_above: falls back (also a named kernel)
    out, plan = attn(q, k, v, return_plan=True, timed=True)
    assert plan.density == density < 1  # the planned density is still reported
    assert plan.info["dense_fallback"] is True and plan.info["kernel"] == "sdpa" == plan.info["kernel_name"]
    s = plan.summary()
    assert s["dense_fallback"] is True and s["kernel"] == "sdpa" and "attend" in s["timings_ms"]
    torch.testing.assert_close(out, sdpa_reference(q, k, v), atol=ATOL, rtol=0)
    assert attn.dense_kernel(plan.problem, v).name == "sdpa"


def test_plan_alone_is_unchanged():
    q, k, _ = tensors(1, 4, 4, 200, 200, seed=2)
    plan = build(dense_above=0.1).plan(q, k)
    ref = build().plan(q, k)
    assert plan.info == {} and torch.equal(plan.layout.kv_counts, ref.layout.kv_counts)
    assert torch.equal(plan.layout.kv_indices, ref.layout.kv_indices)


def test_varlen_through_the_fallback():
    q, k, v = tensors(3, 8, 2, 120, 200, seed=3)
    q_lens, k_lens = torch.tensor([120, 40, 7]), torch.tensor([200, 40, 90])
    out, plan = build(dense_above=0.2)(q, k, v, q_lens=q_lens, k_lens=k_lens, return_plan=True)
    assert plan.info["dense_fallback"] is True and plan.density < 1
    ref = sdpa_reference(q, k, v, q_lens=q_lens, k_lens=k_lens)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    for b, ql in enumerate(q_lens.tolist()):
        assert bool((out[b, :, ql:] == 0).all())  # padded rows are 0


def test_chunked_prefill_nq_below_nk():
    q, k, v = tensors(1, 8, 2, 70, 300, seed=4)
    out, plan = build(dense_above=0.1)(q, k, v, return_plan=True)  # density ~0.16
    assert plan.info["dense_fallback"] is True and plan.density < 1
    torch.testing.assert_close(out, sdpa_reference(q, k, v), atol=ATOL, rtol=0)


def test_non_causal_varlen():
    q, k, v = tensors(2, 4, 2, 64, 150, seed=5)
    q_lens, k_lens = torch.tensor([64, 30]), torch.tensor([150, 12])
    out, plan = build(dense_above=0.1)(q, k, v, causal=False, q_lens=q_lens, k_lens=k_lens, return_plan=True)
    assert plan.info["dense_fallback"] is True and plan.density < 1
    torch.testing.assert_close(out, sdpa_reference(q, k, v, False, q_lens, k_lens), atol=ATOL, rtol=0)


def test_config_round_trip(tmp_path):
    a = build(kernel="torch", dense_above=0.85)
    assert a.dense_above == 0.85 and a.config["dense_above"] == 0.85 and "dense_above=0.85" in repr(a)
    assert sparsekit.build(config=a.config).dense_above == 0.85
    path = a.save(tmp_path / "fallback.toml")
    assert "dense_above = 0.85" in path.read_text()
    b = sparsekit.build(path)
    assert b.dense_above == 0.85 and b.config == a.config
    # off by default, absent from TOML when off; None overrides a config's threshold
    off = build()
    assert off.dense_above is None and off.config["dense_above"] is None and "dense_above" not in repr(off)
    assert "dense_above" not in off.save(tmp_path / "off.toml").read_text()
    assert sparsekit.build(config=a.config, dense_above=None).dense_above is None
    start = tmp_path / "preset.toml"
    start.write_text('preset = "streaming"\ndense_above = 1\n')
    c = sparsekit.build(start)
    assert c.dense_above == 1.0 and isinstance(c.dense_above, float) and c.mask.name == "streaming"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "x", float("nan")])
def test_bad_values_name_the_argument(bad):
    with pytest.raises(ConfigError, match=r"dense_above=.* \(allowed: None \(off\) or a number in \(0, 1\]"):
        build(dense_above=bad)
    with pytest.raises(ConfigError, match="dense_above"):
        sparsekit.build(config={"mask": STREAMING, "dense_above": bad})
    with pytest.raises(ConfigError, match="Fix: pass dense_above=0.85"):
        sparsekit.SparseAttention(None, None, build().mask, None, dense_above=bad)


class HalfDense(Kernel):
    """A dense kernel above sdpa's priority that runs only float16: refused for the fp32 tests."""

    name: ClassVar[str] = "half_dense"
    priority: ClassVar[int] = 200
    dense: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(dtypes=(torch.float16,), devices=("cpu", "cuda"))

    def forward(self, problem, v, layout):  # pragma: no cover - refused in these tests
        raise AssertionError("half_dense must not run float32")


class HalfDensePlugin:
    @hookimpl
    def sparsekit_register_kernels(self, register):
        register(HalfDense)


def registry(*extra):
    reg = Registry(entry_points=False)
    for name, plugin in (("common", common), ("streaming", streaming)) + extra:
        reg.register_plugin(plugin, name)
    return reg


def test_refused_dense_kernel_is_skipped_for_the_next_one():
    q, k, v = tensors(1, 4, 2, 200, 200, seed=6)
    attn = build(dense_above=0.2, registry=registry(("half", HalfDensePlugin()), ("sdpa", sdpa_kernel)))
    out, plan = attn(q, k, v, return_plan=True)
    assert plan.info["dense_fallback"] is True and plan.info["kernel"] == "sdpa"
    torch.testing.assert_close(out, sdpa_reference(q, k, v), atol=ATOL, rtol=0)


@pytest.mark.parametrize("extra, words", [
    ((), "no registered kernel declares dense = True"),
    ((("half", HalfDensePlugin()),), "half_dense: dtype=float32"),
], ids=["none-registered", "none-runnable"])
def test_no_runnable_dense_kernel_runs_the_layout_and_warns_once(extra, words):
    q, k, v = tensors(1, 4, 2, 200, 200, seed=7)
    attn = build(kernel="torch", dense_above=0.2, registry=registry(*extra))
    with pytest.warns(RuntimeWarning, match="running the sparse layout instead") as rec:
        out, plan = attn(q, k, v, return_plan=True)
    assert words in str(rec[0].message)
    assert plan.info["dense_fallback"] is False and words in plan.info["dense_fallback_reason"]
    assert plan.info["kernel"] == "torch"
    assert torch.equal(out, build(kernel="torch", registry=registry(*extra))(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, again = attn(q, k, v, return_plan=True)  # same reason: no second warning
    assert again.info["dense_fallback"] is False
    with pytest.raises(UnsupportedError, match=f"(?s)no dense kernel can run .*{words}"):
        attn.dense_kernel(plan.problem, v)


def test_kernel_contract_dense_classvar():
    assert Kernel.dense is False and SdpaKernel.dense is True
    builtin = {n: e.cls.dense for n, e in sparsekit.get_registry().stages["kernel"].items()}
    assert builtin["sdpa"] and not any(builtin[n] for n in ("torch", "triton", "flex") if n in builtin)
    q, k, v = tensors(1, 4, 1, 70, 200, seed=8)
    p = sparsekit.AttentionProblem.create(q, k, v, block_q=16, block_k=16)
    assert SdpaKernel().not_supported_reasons(p, v, None) == []
    torch.testing.assert_close(SdpaKernel().forward(p, v, None), sdpa_reference(q, k, v), atol=ATOL, rtol=0)
