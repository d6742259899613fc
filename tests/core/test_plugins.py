"""The plugin system: entry points, failures reported, duplicates rejected, programmatic registration."""

from __future__ import annotations

import importlib.metadata
import types

import attrs
import pytest

import sparsekit
from sparsekit import Estimator, PluginError, Registry, hookimpl


def test_builtins_load_through_entry_points():
    reg = Registry()
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="sparsekit")}
    for name in ("common", "dense", "proxyattn", "triton"):
        assert eps[name] == f"sparsekit.plugins.{'triton_kernel' if name == 'triton' else name}"
        assert reg.sources[name].startswith("entry point")
    assert reg.get("estimator", "proxy").plugin == "proxyattn"
    assert reg.get("budget", "dynamic").plugin == "proxyattn"
    assert reg.get("mask", "topk").plugin == "common"
    assert reg.get("kernel", "triton").plugin == "triton"
    assert reg.get("kernel", "torch").plugin == "common"
    assert "proxyattn" in reg.presets and not reg.failures


class _EP:
    """Stands in for an importlib.metadata.EntryPoint."""

    def __init__(self, name, value, load):
        self.name, self.value, self.dist, self.load = name, value, None, load


def test_a_plugin_whose_import_fails_is_reported_not_fatal(monkeypatch):
    from sparsekit.plugins import common

    def boom():
        raise ImportError("No module named 'not_installed_dep'")

    fake = [_EP("broken", "broken_pkg.plugin", boom), _EP("common", "sparsekit.plugins.common", lambda: common)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: fake)
    reg = Registry()
    assert "topk" in reg.names("mask")  # the good plugin still loaded
    assert reg.failures[0].plugin == "broken" and "not_installed_dep" in reg.failures[0].error
    from sparsekit.info import report

    assert report(reg)["failures"] == [{"plugin": "broken", "error": reg.failures[0].error}]
    with pytest.raises(sparsekit.ConfigError, match="plugins that failed to load: broken"):
        reg.get("estimator", "whatever")


def test_a_plugin_whose_hook_raises_is_reported_and_removed():
    class Bad:
        @hookimpl
        def sparsekit_register_estimators(self, register):
            raise RuntimeError("oops")

    reg = Registry(entry_points=False)
    reg.register_plugin(Bad(), "bad")
    assert reg.failures[0].plugin == "bad" and "oops" in reg.failures[0].error
    assert not reg.pm.has_plugin("bad")


@attrs.frozen
class Twin(Estimator):
    name = "proxy"


def test_duplicate_names_name_both_owners():
    from sparsekit.plugins import proxyattn

    class Dup:
        @hookimpl
        def sparsekit_register_estimators(self, register):
            register(Twin)

    reg = Registry(entry_points=False)
    reg.register_plugin(proxyattn, "proxyattn")
    with pytest.raises(PluginError) as ei:
        reg.register_plugin(Dup(), "copycat")
    msg = str(ei.value)
    assert "duplicate estimator name 'proxy'" in msg and "'proxyattn'" in msg and "'copycat'" in msg
    assert not reg.pm.has_plugin("copycat")
    with pytest.raises(PluginError, match="already registered"):
        reg.register_plugin(proxyattn, "proxyattn")
    with pytest.raises(PluginError, match="already registered as 'proxyattn'; cannot add it again as 'again'"):
        reg.register_plugin(proxyattn, "again")


def test_registered_class_must_subclass_the_stage_base():
    class Wrong:
        @hookimpl
        def sparsekit_register_masks(self, register):
            register(dict)

    with pytest.raises(PluginError, match="not a subclass of sparsekit.MaskBuilder"):
        Registry(entry_points=False).register_plugin(Wrong(), "wrong")


def test_programmatic_registration_in_the_global_registry():
    @attrs.frozen
    class Ones(Estimator):
        name = "ones_for_test"
        produces = "rank"

        def estimate(self, problem):
            import torch

            vis = problem.visible_mask()[:, None].float()
            return sparsekit.BlockScores(vis.log(), "rank")

    mod = types.ModuleType("ones_plugin")
    mod.sparsekit_register_estimators = hookimpl(lambda register: register(Ones))
    name = sparsekit.register_plugin(mod, "ones_plugin")
    try:
        attn = sparsekit.build(estimator="ones_for_test", budget="fixed(ratio=0.5)", kernel="torch",
                               block_q=16, block_k=16)
        import torch

        q = torch.randn(1, 2, 64, 16)
        out = attn(q, q[:, :1], q[:, :1])
        assert out.shape == (1, 2, 64, 16)
    finally:
        sparsekit.get_registry().unregister(name)
    assert "ones_for_test" not in sparsekit.get_registry().names("estimator")
