"""build(): names, options, presets, config round-trip and composition checks."""

from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit import CompositionError, ConfigError


def test_preset_has_the_paper_defaults():
    attn = sparsekit.build("proxyattn")
    assert attn.name == "proxy(g=1,stride=4)+dynamic(gamma=0.95,min_budget=2048)+topk(sink=True,diagonal=True)+auto"
    assert (attn.block_q, attn.block_k) == (128, 128)


def test_stage_label_strings_dicts_and_preset_overrides():
    a = sparsekit.build(estimator="proxy(g=2,stride=8)", budget={"name": "dynamic", "gamma": 0.9}, kernel="torch")
    assert a.estimator.g == 2 and a.estimator.stride == 8 and a.estimator.label == "proxy(g=2,stride=8)"
    assert a.budgeter.gamma == 0.9 and a.mask.name == "topk" and a.kernel.name == "torch"
    b = sparsekit.build("proxyattn", budget={"gamma": 0.9})  # options only: override the preset's stage
    assert b.budgeter.gamma == 0.9 and b.budgeter.min_budget == 2048 and b.estimator.stride == 4


def test_unknown_names_list_the_available_ones_and_the_closest():
    with pytest.raises(ConfigError) as ei:
        sparsekit.build(estimator="proxi", budget="dynamic")
    msg = str(ei.value)
    assert "unknown estimator 'proxi'" in msg and "proxy" in msg and "Did you mean 'proxy'?" in msg
    with pytest.raises(ConfigError, match="unknown preset 'proxyatn'.*Did you mean 'proxyattn'"):
        sparsekit.build("proxyatn")


def test_misspelt_option_names_the_valid_options():
    with pytest.raises(ConfigError) as ei:
        sparsekit.build(estimator="proxy(strid=8)", budget="dynamic")
    msg = str(ei.value)
    assert "'strid' (did you mean 'stride'?)" in msg and "valid options: g, stride, step_mb" in msg


def test_malformed_label():
    with pytest.raises(ConfigError, match="literal keyword arguments"):
        sparsekit.build(estimator="proxy(8)", budget="dynamic")


@pytest.mark.parametrize("kwargs, words", [
    ({"estimator": None, "budget": "dynamic"}, ["mask 'topk' needs block scores", "proxy"]),
    ({"estimator": "proxy", "budget": None}, ["mask 'topk' needs a budget", "dynamic", "fixed"]),
    ({"estimator": "proxy", "budget": "dynamic", "mask": "dense"}, ["takes no budget"]),
    ({"estimator": "proxy", "budget": None, "mask": "dense"}, ["estimator 'proxy' was given", "estimator=None"]),
])
def test_incompatible_compositions_are_refused_before_any_tensor(kwargs, words):
    with pytest.raises(CompositionError) as ei:
        sparsekit.build(**kwargs)
    for w in words:
        assert w in str(ei.value)


def test_kind_mismatch_is_named(tmp_path):
    from sparsekit import Budget, Budgeter, Registry, hookimpl
    from sparsekit.plugins import common, proxyattn

    class MassBudget(Budgeter):
        name = "massy"
        produces = "mass"

        def allocate(self, problem, scores):  # pragma: no cover - never reached
            return Budget("mass", torch.ones(1, 1, 1))

    class Plug:
        @hookimpl
        def sparsekit_register_budgeters(self, register):
            register(MassBudget)

    reg = Registry(entry_points=False)
    reg.register_plugin(common, "common")
    reg.register_plugin(proxyattn, "proxyattn")
    reg.register_plugin(Plug(), "massy")
    with pytest.raises(CompositionError, match="budget 'massy' produces 'mass' budgets but mask 'topk' accepts"):
        sparsekit.build(estimator="proxy", budget="massy", registry=reg)


def test_config_round_trip_dict_and_toml(tmp_path):
    a = sparsekit.build("proxyattn", estimator={"stride": 8}, kernel="torch", block_q=64)
    cfg = a.config
    b = sparsekit.build(config=cfg)
    assert b.name == a.name and b.block_q == 64
    path = a.save(tmp_path / "ablation.toml")
    text = path.read_text()
    assert "[estimator]" in text and 'name = "proxy"' in text and "stride = 8" in text
    c = sparsekit.build(path)
    assert c.name == a.name and c.config == a.config
    d = sparsekit.build(str(path))
    assert d.config == a.config


def test_none_options_and_string_options_round_trip(tmp_path):
    a = sparsekit.build(estimator="proxy", budget="fixed(blocks=4,ratio=None)", kernel="torch")
    assert a.budgeter.label == "fixed(blocks=4,ratio=None)"
    path = a.save(tmp_path / "fixed.toml")
    assert 'unset = [\n    "ratio",\n]' in path.read_text() or 'unset = ["ratio"]' in path.read_text()
    b = sparsekit.build(path)
    assert b.budgeter.blocks == 4 and b.budgeter.ratio is None and b.config == a.config
    # a label with a string option parses back to the same stage
    from sparsekit.config import parse_spec
    from sparsekit.stages import Stage

    class S:
        name = "x"

    spec = parse_spec("x(mode='fast',n=3)", "estimator")
    assert spec == {"name": "x", "mode": "fast", "n": 3}


def test_toml_can_start_from_a_preset(tmp_path):
    path = tmp_path / "gamma90.toml"
    path.write_text('preset = "proxyattn"\n[budget]\ngamma = 0.9\nname = "dynamic"\n')
    attn = sparsekit.build(path)
    assert attn.budgeter.gamma == 0.9 and attn.estimator.name == "proxy"


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[estimator\nname='proxy'")
    with pytest.raises(ConfigError, match="not valid TOML"):
        sparsekit.build(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("blocks = 3\n")
    with pytest.raises(ConfigError, match="unknown keys \\['blocks'\\]"):
        sparsekit.build(unknown)
    with pytest.raises(ConfigError, match="is not a file"):
        sparsekit.build(tmp_path / "missing.toml")


def test_auto_kernel_picks_a_runnable_kernel_and_explicit_kernel_refuses_with_reasons(monkeypatch):
    q = torch.randn(1, 2, 256, 16)
    k = torch.randn(1, 1, 256, 16)
    auto = sparsekit.build(estimator="proxy", budget="fixed(blocks=2,ratio=None)", block_q=16, block_k=16)
    plan = auto.plan(q, k)
    assert plan.density < 1  # a sparse layout: dense-only kernels (sdpa) refuse it
    # on CPU, auto prefers the native torch kernel, with or without Triton's interpreter
    assert auto.select_kernel(plan.problem, k, plan.layout).name == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert auto.select_kernel(plan.problem, k, plan.layout).name == "torch"
    explicit = sparsekit.build(estimator="proxy", budget="fixed(blocks=2,ratio=None)", kernel="triton",
                               block_q=16, block_k=16)
    with pytest.raises(sparsekit.UnsupportedError) as ei:
        explicit(q, k, k)
    msg = str(ei.value)
    assert "kernel 'triton' cannot run" in msg and "device=cpu" in msg and "Kernels that can run it:" in msg and "torch" in msg.split("Kernels that can run it:")[1]


def test_auto_kernel_reports_every_candidate_when_none_fits(monkeypatch):
    q = torch.randn(1, 2, 64, 16, dtype=torch.float64)
    k = torch.randn(1, 1, 64, 16, dtype=torch.float64)
    reg = sparsekit.Registry(entry_points=False)
    from sparsekit.plugins import common, dense, triton_kernel

    reg.register_plugin(dense, "dense")
    reg.register_plugin(triton_kernel, "triton")
    reg.register_plugin(common, "common")
    reg.unregister("common")  # unregister removes its stages: only the triton kernel is left
    assert reg.names("kernel") == ["triton"]
    attn = sparsekit.build("dense", block_q=16, block_k=16, registry=reg)
    with pytest.raises(sparsekit.UnsupportedError, match="(?s)no kernel can run .*triton: dtype=float64"):
        attn(q, k, k)


def test_plan_reports_density_budgets_and_timings():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 256, 16, generator=g), torch.randn(1, 2, 256, 16, generator=g)
    attn = sparsekit.build("proxyattn", budget={"min_budget": 0, "gamma": 0.5}, kernel="torch", block_q=32, block_k=32)
    plan = attn.plan(q, k)
    s = plan.summary()
    assert 0 < s["density"] <= 1 and set(s["timings_ms"]) == {"estimate", "budget", "mask"}
    assert len(s["budget_ratio_per_head"][0]) == 4 and len(s["density_per_head"][0]) == 4
    assert plan.layout.kv_indices.shape[-1] == int(plan.layout.kv_counts.max())  # max_k = largest count used
    v = torch.randn(1, 2, 256, 16, generator=g)
    _, ran = attn(q, k, v, return_plan=True)
    assert ran.summary()["kernel"] == "torch" and ran.info["kernel"] == "torch"
