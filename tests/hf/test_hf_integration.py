"""sparsekit.hf on tiny randomly initialised transformers models (CPU, fp32, nothing downloaded).

At full budget (``dynamic(gamma=1.0)``) the sparse path must reproduce ``attn_implementation="sdpa"``:
logits within fp32 tolerance and identical greedy tokens, for plain, padded (left/right) and chunked prefill.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparsekit  # noqa: E402
import sparsekit.hf as skhf  # noqa: E402
from transformers import (DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig,  # noqa: E402
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

FULL = dict(estimator="proxy", budget="dynamic(gamma=1.0)", kernel="torch", block_q=16, block_k=16, min_seq_len=0)
SPARSE = dict(estimator="proxy(stride=4)", budget="dynamic(gamma=0.6,min_budget=0)", kernel="torch", block_q=16,
              block_k=16, min_seq_len=0)
ATOL = 2e-4
VOCAB = 97


def _common(**kw):
    return dict(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=1024,
                attn_implementation="sdpa", **kw)


def make(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":  # 4 q heads / 2 kv heads, head_dim 16
        model = LlamaForCausalLM(LlamaConfig(**_common(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)))
    elif kind == "qwen2":  # 7 q heads per kv head (Qwen2.5-7B's 28/4), head_dim 16, qkv bias
        model = Qwen2ForCausalLM(Qwen2Config(**_common(hidden_size=112, num_attention_heads=7, num_key_value_heads=1)))
    elif kind == "mistral":  # 4/1 heads, no sliding window (sliding layers stay SDPA)
        model = MistralForCausalLM(MistralConfig(**_common(hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                           head_dim=16, sliding_window=None)))
    else:
        raise ValueError(kind)
    return model.eval()


def ids(B: int, N: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (B, N), generator=g)


def padded(B: int, N: int, side: str, lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = ids(B, N)
    am = torch.zeros(B, N, dtype=torch.long)
    for b, n in enumerate(lens):
        if side == "left":
            am[b, N - n:] = 1
        else:
            am[b, :n] = 1
    return x, am


def valid_close(a: torch.Tensor, b: torch.Tensor, am: torch.Tensor | None = None, atol: float = ATOL) -> None:
    assert torch.isfinite(a).all()
    if am is not None:
        sel = am.bool()
        a, b = a[sel], b[sel]
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():  # (one intra-op thread per worker: tests/conftest.py)
        yield


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_full_budget_logits_and_generate_match_sdpa(kind):
    model = make(kind)
    x = ids(1, 100)
    ref = model(x).logits
    ref_gen = model.generate(x, max_new_tokens=6, do_sample=False)
    skhf.enable(model, **FULL)
    assert model.config._attn_implementation == "sparsekit"
    valid_close(model(x).logits, ref)
    st = skhf.stats(model)
    assert [r["layer"] for r in st] == [0, 1] and all(r["route"] == "sparse" for r in st)
    assert all(r["density"] == 1.0 and r["kernel"] == "torch" for r in st)
    gen = model.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(gen, ref_gen)
    # after generate(): the last call of every layer was a decoding step (SDPA); the prefill was sparse
    assert all(r["route"] == "sdpa" and r["reason"] == "decode" for r in skhf.stats(model))
    assert all(r["route"] == "sparse" and r["q_len"] == 100 for r in skhf.stats(model, sparse_only=True))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_padded_batch_matches_sdpa(kind, side):
    model = make(kind)
    x, am = padded(3, 96, side, [96, 61, 23])
    ref = model(x, attention_mask=am).logits
    skhf.enable(model, **FULL)
    out = model(x, attention_mask=am).logits
    valid_close(out, ref, am)
    st = skhf.stats(model)[0]
    assert st["route"] == "sparse" and st["q_lens"] == [96, 61, 23] and st["k_lens"] == [96, 61, 23]


def test_left_padded_generate_matches_sdpa():
    model = make("llama")
    x, am = padded(2, 80, "left", [80, 41])
    ref = model.generate(x, attention_mask=am, max_new_tokens=6, do_sample=False)
    skhf.enable(model, **FULL)
    out = model.generate(x, attention_mask=am, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
@pytest.mark.parametrize("side", ["none", "left"])
def test_chunked_prefill_matches_sdpa(side):
    model = make("qwen2")
    N, first = 112, 64
    # left: the second sequence has no token in the first chunk (a chunk made only of padding)
    x, am = padded(2, N, "left", [N, 40]) if side == "left" else (ids(2, N), torch.ones(2, N, dtype=torch.long))
    ref = model(x, attention_mask=am).logits
    skhf.enable(model, **FULL)
    cache = DynamicCache(config=model.config)
    out1 = model(x[:, :first], attention_mask=am[:, :first], past_key_values=cache).logits
    out2 = model(x[:, first:], attention_mask=am, past_key_values=cache).logits
    valid_close(out1, ref[:, :first], am[:, :first])
    valid_close(out2, ref[:, first:], am[:, first:])
    st = skhf.stats(model)[0]
    assert st["route"] == "sparse" and st["q_len"] == N - first and st["kv_len"] == N
    # the next single token decodes through SDPA
    model(x[:, :1], attention_mask=torch.cat([am, am[:, :1]], 1), past_key_values=cache)
    assert skhf.stats(model)[0]["reason"] == "decode"


def test_static_cache_generate_matches_sdpa():
    model = make("llama")
    x, am = padded(2, 80, "left", [80, 41])
    ref = model.generate(x, attention_mask=am, max_new_tokens=5, do_sample=False, cache_implementation="static")
    skhf.enable(model, **FULL)
    out = model.generate(x, attention_mask=am, max_new_tokens=5, do_sample=False, cache_implementation="static")
    assert torch.equal(out, ref)
    st = skhf.stats(model, sparse_only=True)[0]
    assert st["kv_len"] == 80 and st["k_lens"] == [80, 41]  # the unwritten tail of the static cache is skipped


def test_sparse_padded_batch_equals_each_sequence_alone():
    """A genuinely sparse layout: a padded sequence gives what it gives alone (batch invariance, left and right)."""
    model = make("llama")
    skhf.enable(model, **SPARSE)
    lens = [128, 90, 50]
    for side in ("left", "right"):
        x, am = padded(3, 128, side, lens)
        out = model(x, attention_mask=am).logits
        assert torch.isfinite(out).all()
        dens = skhf.stats(model)[0]["density"]
        assert 0.0 < dens < 1.0
        for b, n in enumerate(lens):
            sl = slice(128 - n, 128) if side == "left" else slice(0, n)
            alone = model(x[b: b + 1, sl]).logits
            torch.testing.assert_close(out[b, sl], alone[0], atol=ATOL, rtol=1e-4)


def test_min_seq_len_routing():
    model = make("llama")
    skhf.enable(model, **{**FULL, "min_seq_len": 128})
    model(ids(1, 100))
    assert {(r["route"], r["reason"]) for r in skhf.stats(model)} == {("sdpa", "short")}
    model(ids(1, 140))
    assert {r["route"] for r in skhf.stats(model)} == {"sparse"}
    assert skhf.Settings().min_seq_len == skhf.DEFAULT_MIN_SEQ_LEN == 8192


@pytest.mark.parametrize("layers", [{"dense": [0]}, {0: "sdpa"}, lambda i: None if i == 0 else "default"])
def test_per_layer_override(layers):
    model = make("mistral")
    x = ids(1, 112)
    ref = model(x).logits
    skhf.enable(model, layers=layers, **FULL)
    valid_close(model(x).logits, ref)
    st = skhf.stats(model)
    assert (st[0]["route"], st[0]["reason"]) == ("sdpa", "layer override")
    assert st[1]["route"] == "sparse"


def test_per_layer_preset_and_options():
    model = make("llama")
    skhf.enable(model, layers={1: {"preset": "dense", "kernel": "torch", "block_q": 16, "block_k": 16}}, **SPARSE)
    model(ids(1, 128))
    st = skhf.stats(model)
    assert st[0]["density"] < 1.0 and st[1]["density"] == 1.0 and st[1]["pipeline"].startswith("dense")


def test_per_layer_options_without_preset_override_the_default():
    model = make("llama")
    skhf.enable(model, layers={1: {"budget": {"gamma": 0.99}}, 0: {"budget": "dynamic(gamma=0.98)"}},
                dense_above=0.95, **SPARSE)
    s = skhf.settings(model)
    one, zero = s.pipeline(1), s.pipeline(0)
    assert one.config["budget"] == {**s.default.config["budget"], "gamma": 0.99}  # the default's budget, gamma changed
    assert zero.config["budget"]["gamma"] == 0.98
    for p in (one, zero):  # everything else is the default's: estimator, kernel, blocks, dense_above
        assert {k: v for k, v in p.config.items() if k != "budget"} == \
            {k: v for k, v in s.default.config.items() if k != "budget"}
    model(ids(1, 128))
    assert [r["route"] for r in skhf.stats(model)] == ["sparse", "sparse"]


def test_stats_budgets_and_timing():
    model = make("qwen2")
    skhf.enable(model, timing=True, **SPARSE)
    model(ids(1, 128))
    st = skhf.stats(model)
    assert len(st) == 2
    for r in st:
        assert 0.0 < r["density"] < 1.0
        assert len(r["density_per_head"]) == 1 and len(r["density_per_head"][0]) == 7
        assert len(r["budget_ratio_per_head"][0]) == 7
        assert {"estimate", "budget", "mask", "attend", "total"} <= set(r["timings_ms"])
    skhf.reset_stats(model)
    assert skhf.stats(model) == []
    skhf.enable(model, stats=False, **SPARSE)
    model(ids(1, 128))
    assert skhf.stats(model) == []


def test_dense_above_reaches_build_and_stats_show_the_dense_layer():
    model = make("llama")
    x, am = padded(2, 96, "right", [96, 61])
    ref = model(x, attention_mask=am).logits
    stream = dict(mask={"sink_blocks": 1, "local_blocks": 1}, kernel="torch", block_q=16, block_k=16)
    # layer 0: the streaming layout is well below 1 but above 0.2 -> dense SDPA; layer 1: threshold not reached
    skhf.enable(model, "streaming", min_seq_len=0, dense_above=0.2,
                layers={1: {"preset": "streaming", "dense_above": 0.99, **stream}}, **stream)
    assert skhf.settings(model).default.dense_above == 0.2
    out = model(x, attention_mask=am).logits
    st = skhf.stats(model)
    assert st[0]["route"] == "sparse" and st[0]["dense_fallback"] is True and st[0]["kernel"] == "sdpa"
    assert 0.2 <= st[0]["density"] < 1.0  # the planned density, not 1
    assert st[1]["dense_fallback"] is False and st[1]["kernel"] == "torch" and st[1]["density"] < 0.99
    skhf.enable(model, "streaming", min_seq_len=0, layers={1: "sdpa"}, dense_above=0.2, **stream)
    valid_close(model(x, attention_mask=am).logits, ref, am)  # dense layer 0 + SDPA layer 1 == SDPA
    assert skhf.stats(model)[0]["dense_fallback"] is True
    assert not torch.allclose(out[am.bool()], ref[am.bool()], atol=ATOL)  # layer 1 really ran its layout
    skhf.enable(model, "streaming", min_seq_len=0, **stream)
    model(x, attention_mask=am)
    assert "dense_fallback" not in skhf.stats(model)[0]  # off: no such key


def test_disable_restores_previous_implementation():
    model = make("llama")
    model.set_attn_implementation("eager")
    x = ids(1, 64)
    ref = model(x).logits
    skhf.enable(model, **FULL)
    skhf.enable(model, **SPARSE)  # enabling twice keeps the original implementation to restore
    skhf.disable(model)
    assert model.config._attn_implementation == "eager"
    assert skhf.stats(model) == []
    torch.testing.assert_close(model(x).logits, ref)


def test_from_pretrained_with_config_options(tmp_path):
    make("llama").save_pretrained(tmp_path)
    ref_model = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    x = ids(1, 100)
    ref = ref_model(x).logits
    opts = {"preset": "proxyattn", **{k: v for k, v in FULL.items()}}
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    config.sparsekit = opts  # read at call time
    model = LlamaForCausalLM.from_pretrained(tmp_path, config=config, attn_implementation="sparsekit").eval()
    assert model.config._attn_implementation == "sparsekit"
    valid_close(model(x).logits, ref)
    assert skhf.stats(model)[0]["route"] == "sparse"
    # changing the config dict is picked up at the next call
    model.config.sparsekit = {**opts, "min_seq_len": 4096}
    model(x)
    assert skhf.stats(model)[0]["reason"] == "short"
    # configure() overrides the config dict
    skhf.configure(model, **FULL)
    model(x)
    assert skhf.stats(model)[0]["route"] == "sparse"


def test_default_settings_without_options(tmp_path):
    make("llama").save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sparsekit").eval()
    s = skhf.settings(model)
    assert s.min_seq_len == 8192 and s.default.name.startswith("proxy(") and s.default.kernel is None
    model(ids(1, 40))  # short: SDPA
    assert skhf.stats(model)[0]["reason"] == "short"


def test_sliding_window_layers_stay_sdpa():
    torch.manual_seed(0)
    cfg = MistralConfig(**_common(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                  sliding_window=32))
    model = MistralForCausalLM(cfg).eval()
    x = ids(1, 100)
    ref = model(x).logits
    skhf.enable(model, **FULL)
    valid_close(model(x).logits, ref)
    assert {r["route"] for r in skhf.stats(model)} == {"sdpa"}


def test_bad_options_fail_at_enable():
    model = make("llama")
    with pytest.raises(sparsekit.SparsekitError):
        skhf.enable(model, budget="nonexistent")
    with pytest.raises(sparsekit.ConfigError):
        skhf.enable(model, layers=[0, 1])
    assert model.config._attn_implementation == "sdpa"
