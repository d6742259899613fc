"""``sparsekit ablate`` / ``sparsekit.ablate.run``: a tiny grid end to end on CPU, reruns, bad configs."""

from __future__ import annotations

import copy
import csv
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from sparsekit import ConfigError
from sparsekit.ablate import CSV_COLUMNS, PLOTS, expand, load, run
from sparsekit.cli import main
from sparsekit.workloads import SyntheticWorkload

SYNTH = {"heads": 4, "kv_heads": 2, "head_dim": 32, "window": 32, "needle_rows": 32}
TOML = """
lengths = [256, 512]
recall_rows = 64
heatmap_length = 256

[[strategy]]
name = "proxyattn"
preset = "proxyattn"
block_q = 32
block_k = 32
budget = { gamma = [0.8, 0.95], min_budget = 0 }

[[strategy]]
name = "fixed"
preset = "proxyattn"
block_q = 32
block_k = 32
budget = { name = "fixed", ratio = [0.5, 1.0] }

[[workload]]
name = "synthetic"
heads = 4
kv_heads = 2
head_dim = 32
window = 32
needle_rows = 32
seed = 0

[[workload]]
name = "captured"
path = "qkv.safetensors"
layers = [1]
"""


def _capture(path: Path, n: int = 512, layers: int = 2) -> Path:
    """A file in the capture format: layer{i}.q [1, Hq, N, D], layer{i}.k / .v [1, Hkv, N, D]."""
    from safetensors.torch import save_file

    tensors = {}
    for i in range(layers):
        q, k, v = SyntheticWorkload(n=n, **SYNTH, seed=10 + i).generate()
        tensors.update({f"layer{i}.q": q.contiguous(), f"layer{i}.k": k.contiguous(), f"layer{i}.v": v.contiguous()})
    save_file(tensors, str(path))
    return path


def _tiny_dict(tmp_path: Path) -> dict:
    return {"lengths": [256], "recall_rows": 32, "heatmap_length": 256,
            "strategy": [{"name": "proxyattn", "preset": "proxyattn", "block_q": 32, "block_k": 32,
                          "budget": {"gamma": [0.8, 0.95], "min_budget": 0}},
                         {"name": "xattention", "preset": "xattention", "block_q": 32, "block_k": 32,
                          "estimator": {"stride": 4}}],
            "workload": [{"name": "synthetic", **SYNTH, "seed": [0, 1]}]}


def test_cli_end_to_end_files_rows_plots_and_rerun(tmp_path, capsys):
    _capture(tmp_path / "qkv.safetensors")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TOML)
    out = tmp_path / "runs"
    assert main(["ablate", str(cfg), "--out", str(out), "--device", "cpu"]) == 0
    assert "16 cells run, 0 reused" in capsys.readouterr().out

    # 2 strategies x 2 params x 2 workloads x 2 lengths
    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 16 and len({r["key"] for r in rows}) == 16
    assert {(r["workload"], r["length"]) for r in rows} == {(w, n) for w in ("synthetic", "captured") for n in ("256", "512")}
    assert {r["params"] for r in rows} == {"budget.gamma=0.8", "budget.gamma=0.95", "budget.ratio=0.5", "budget.ratio=1.0"}
    assert all(r["label"].endswith("@32x32") and r["kernel"] in ("torch", "sdpa") and r["device"] == "cpu" for r in rows)
    assert {r["layer"] for r in rows if r["workload"] == "captured"} == {"1"}
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 16
    for line in lines:
        row = json.loads(line)
        assert set(CSV_COLUMNS) <= set(row)
        assert 0 < row["density"] <= 1 and 0 < row["recall"] <= 1 + 1e-6 and row["rel_error"] >= 0
        assert row["plan_ms"] > 0 and row["attend_ms"] > 0 and row["dense_ms"] > 0
        assert row["heads"] == 4 and row["kv_heads"] == 2 and row["head_dim"] == 32
        ph = row["per_head"]
        assert len(ph["density"]) == len(ph["recall"]) == len(ph["rel_error"]) == 4
        if row["strategy"] == "proxyattn":
            assert len(ph["budget_ratio"]) == 4 and row["budget_ratio_mean"] is not None
        if row["params"] == "budget.ratio=1.0":  # full budget: the dense oracle
            assert row["density"] == 1.0 and row["recall"] == pytest.approx(1.0, abs=1e-5)
            assert row["rel_error"] < 1e-5
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"

    # a rerun skips every finished cell
    assert main(["ablate", str(cfg), "--out", str(out), "--device", "cpu", "--no-plots"]) == 0
    assert "0 cells run, 16 reused" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == 16
    assert len((out / "results.csv").read_text().splitlines()) == 17


def test_python_api_reuses_finished_cells_and_runs_only_new_ones(tmp_path):
    config = _tiny_dict(tmp_path)
    out = tmp_path / "api"
    rows = run(config, out=out, progress=False, plots=False, summary=False)
    assert len(rows) == 6  # (2 proxyattn params + 1 xattention) x 2 seeds
    assert [r["strategy"] for r in rows[:3]] == ["proxyattn", "proxyattn", "xattention"]
    assert [r["seed"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert all(r["label"] == r["label"].strip() and "(" in r["label"] for r in rows)
    # the dense reference is shared by every strategy of a workload cell
    assert len({r["dense_ms"] for r in rows if r["seed"] == 0}) == 1

    more = copy.deepcopy(config)
    more["strategy"][0]["budget"]["gamma"] = [0.8, 0.95, 0.99]
    rows2 = run(more, out=out, progress=False, plots=False, summary=False)
    assert len(rows2) == 8
    assert len((out / "results.jsonl").read_text().splitlines()) == 8  # only the 2 new cells ran
    old = {r["key"]: r for r in rows}
    assert all(old[r["key"]] == r for r in rows2 if r["key"] in old)


def test_dense_above_cells_run_dense_and_say_so(tmp_path):
    import csv

    config = {"lengths": [256], "recall_rows": 32, "heatmap_length": 256,
              "strategy": [{"name": "fixed", "preset": "proxyattn", "block_q": 32, "block_k": 32, "kernel": "torch",
                            "budget": {"name": "fixed", "ratio": [0.25, 1.0]}, "dense_above": 0.99},
                           {"name": "plain", "preset": "proxyattn", "block_q": 32, "block_k": 32, "kernel": "torch",
                            "budget": {"name": "fixed", "ratio": 1.0}}],
              "workload": [{"name": "synthetic", **SYNTH, "seed": 0}]}
    rows = run(config, out=tmp_path / "out", progress=False, plots=False, summary=False)
    sparse, full, plain = rows
    assert sparse["dense_fallback"] is False and sparse["kernel"] == "torch" and sparse["density"] < 0.99
    assert sparse["rel_error"] > 1e-3  # the layout ran
    assert full["dense_fallback"] is True and full["kernel"] == "sdpa" and full["density"] == 1.0
    assert full["rel_error"] < 1e-5 and full["recall"] == pytest.approx(1.0)
    assert plain["dense_fallback"] is None and plain["kernel"] == "torch"  # option off: no fallback column value
    with open(tmp_path / "out" / "results.csv") as f:
        got = {r["strategy"] + r["params"]: r["dense_fallback"] for r in csv.DictReader(f)}
    assert sorted(got.values()) == ["", "False", "True"]


def test_cell_keys_are_stable_and_depend_on_the_cell(tmp_path):
    config = _tiny_dict(tmp_path)
    a, b = load(config), load(copy.deepcopy(config))
    keys_a = [a.key(*c) for c in a.cells()]
    assert keys_a == [b.key(*c) for c in b.cells()] and len(set(keys_a)) == len(keys_a)
    config["out"] = "elsewhere"
    config["heatmap_length"] = 512
    c = load(config)
    assert [c.key(*x) for x in c.cells()] == keys_a  # output folder and plots do not enter the key
    config["strategy"][1]["budget"] = {"gamma": 0.8}
    d = load(config)
    assert [d.key(*x) for x in d.cells()] != keys_a


def test_captured_workload_uses_capture_module_when_present(tmp_path, monkeypatch):
    path = _capture(tmp_path / "qkv.safetensors", n=256)
    calls = []

    def load_qkv(p):
        from safetensors.torch import load_file

        calls.append(p)
        t = load_file(p)
        return {i: (t[f"layer{i}.q"], t[f"layer{i}.k"], t[f"layer{i}.v"]) for i in (0, 1)}

    monkeypatch.setitem(sys.modules, "sparsekit.capture", types.SimpleNamespace(load_qkv=load_qkv))
    config = {"lengths": [128], "recall_rows": 16, "heatmap_length": 128,
              "strategy": {"name": "fixed", "preset": "proxyattn", "block_q": 32, "block_k": 32,
                           "budget": "fixed(ratio=1.0)"},
              "workload": {"name": "cap", "path": str(path)}}
    rows = run(config, out=tmp_path / "o", progress=False, plots=False, summary=False)
    assert calls == [str(path)]  # one read per file, all its layers
    assert [r["layer"] for r in rows] == [0, 1] and all(r["rel_error"] < 1e-5 for r in rows)


def test_captured_workload_fallback_reader_and_recorded_scale(tmp_path, monkeypatch):
    """Without sparsekit.capture the file is read directly; the layer's recorded softmax scale is used throughout."""
    from safetensors.torch import save_file

    import sparsekit

    q, k, v = SyntheticWorkload(n=256, **SYNTH, seed=3).generate()
    path = tmp_path / "scaled.safetensors"
    save_file({"layer2.q": q, "layer2.k": k, "layer2.v": v}, str(path),
              metadata={"layer_info": json.dumps({"2": {"scaling": 0.05}})})
    monkeypatch.setitem(sys.modules, "sparsekit.capture", None)  # import fails -> private reader
    config = {"lengths": [256], "recall_rows": 0, "heatmap_length": 128,
              "strategy": {"name": "p", "preset": "proxyattn", "block_q": 32, "block_k": 32,
                           "budget": {"gamma": 0.9, "min_budget": 0}},
              "workload": {"name": "cap", "path": str(path)}}
    [row] = run(config, out=tmp_path / "o", progress=False, plots=False, summary=False)
    assert row["layer"] == 2 and row["workload_config"]["scale"] == 0.05
    attn = sparsekit.build("proxyattn", budget={"gamma": 0.9, "min_budget": 0}, block_q=32, block_k=32)
    out, plan = attn(q, k, v, scale=0.05, return_plan=True)
    assert row["density"] == plan.density
    assert row["recall"] == pytest.approx(sparsekit.attention_recall(q, k, plan.layout, rows=None, scale=0.05), abs=1e-6)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.05, enable_gqa=True)
    assert row["rel_error"] == pytest.approx(sparsekit.relative_error(out, ref), rel=1e-4)


BAD = [
    (lambda c: c.update(lenghts=[256]), ["lenghts", "allowed", "Fix"]),
    (lambda c: c.pop("lengths"), ["lengths", "Fix"]),
    (lambda c: c.update(lengths=[256, -1]), ["lengths=-1", "integer >= 1", "Fix"]),
    (lambda c: c.update(dtype="float8"), ["dtype='float8'", "bfloat16", "Fix"]),
    (lambda c: c.update(device="tpu"), ["device='tpu'", "Fix"]),
    (lambda c: c.update(dense="flash"), ["dense='flash'", "sdpa", "Fix"]),
    (lambda c: c.pop("strategy"), ["strategy=None", "[[strategy]]", "Fix"]),
    (lambda c: c["strategy"][0].pop("name"), ["strategy[0].name", "Fix"]),
    (lambda c: c["strategy"][0].update(gamma=0.9), ["strategy[0] ('proxyattn')", "gamma", "budget = { gamma = 0.9 }"]),
    (lambda c: c["strategy"][0].update(preset="proxyatn"), ["strategy[0] ('proxyattn')", "proxyatn", "proxyattn", "Fix"]),
    (lambda c: c["strategy"][0]["budget"].update(gama=0.9), ["strategy[0] ('proxyattn')", "gama", "gamma", "Fix"]),
    (lambda c: c["strategy"][0]["budget"].update(gamma=[0.9, 1.5]), ["budget.gamma=1.5", "gamma=1.5", "Fix"]),
    (lambda c: c["strategy"][0]["budget"].update(gamma=[]), ["budget.gamma=[]", "non-empty list", "Fix"]),
    (lambda c: c["strategy"][0].update(block_q=48), ["block_q=48", "power of two", "Fix"]),
    (lambda c: c["workload"][0].update(heads=3), ["workload[0] ('synthetic').heads=3", "multiple of kv_heads", "Fix"]),
    (lambda c: c["workload"][0].update(head=8), ["workload[0] ('synthetic')", "'head'", "heads", "Fix"]),
    (lambda c: c["workload"][0].update(kind="real"), ["kind='real'", "'synthetic', 'captured'", "Fix"]),
    (lambda c: c["workload"].append({"name": "cap", "path": "missing.safetensors"}),
     ["workload[1] ('cap').path='missing.safetensors'", "existing file", "Fix"]),
]


@pytest.mark.parametrize("mutate,expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_configs_name_key_value_allowed_and_fix(tmp_path, mutate, expected):
    config = _tiny_dict(tmp_path)
    mutate(config)
    with pytest.raises(ConfigError) as err:
        load(config)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_bad_captured_layers_and_lengths(tmp_path):
    path = _capture(tmp_path / "qkv.safetensors", n=256)
    config = _tiny_dict(tmp_path)
    config["workload"] = [{"name": "cap", "path": str(path), "layers": [0, 5]}]
    with pytest.raises(ConfigError, match=r"layers=5 .*\[0, 1\].*Fix"):
        load(config)
    config["workload"] = [{"name": "cap", "path": str(path)}]
    config["lengths"] = [512]
    with pytest.raises(ConfigError, match=r"lengths=\[512\].*<= 256.*Fix"):
        load(config)
    config["workload"][0]["lengths"] = [128, 256]  # a workload's own lengths fix it
    assert [n for _, n, _ in load(config).cells()][:1] == [128]


def test_cli_bad_config_exits_2_with_the_message(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('lengths = [256]\n[[strategy]]\nname = "x"\npreset = "nope"\n[[workload]]\nname = "s"\n')
    assert main(["ablate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "strategy[0] ('x')" in err and "nope" in err and "Fix" in err


def test_expand_is_a_row_major_grid_and_lists_of_lists_are_values():
    grid = expand({"a": [1, 2], "s": {"b": ["x", "y"], "c": 3}, "t": [[0.6, 1.4]]})
    assert [p for _, p in grid] == [{"a": 1, "s.b": "x", "t": [0.6, 1.4]}, {"a": 1, "s.b": "y", "t": [0.6, 1.4]},
                                    {"a": 2, "s.b": "x", "t": [0.6, 1.4]}, {"a": 2, "s.b": "y", "t": [0.6, 1.4]}]
    assert grid[3][0] == {"a": 2, "s": {"b": "y", "c": 3}, "t": [0.6, 1.4]}


def test_example_configs_load(monkeypatch):
    folder = Path(__file__).resolve().parents[2] / "examples" / "ablations"
    configs = sorted(folder.glob("*.toml"))
    assert {p.stem for p in configs} >= {"gamma", "proxy_groups", "stride", "dynamic_vs_fixed", "strategies"}
    for path in configs:
        abl = load(path, device="cpu")
        assert abl.cells(), path
