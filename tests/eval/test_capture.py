"""capture_qkv on tiny random transformers models: shapes, exactness against the layers' own attention outputs,
untouched model behaviour, and the safetensors round trip."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import sparsekit  # noqa: E402
from sparsekit.capture import CapturedQKV, capture_qkv, load_qkv, recording, save_qkv  # noqa: E402
from sparsekit.errors import InputError  # noqa: E402
from transformers import (AttentionInterface, LlamaConfig, LlamaForCausalLM, Qwen2Config,  # noqa: E402
                          Qwen2ForCausalLM)
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

VOCAB = 97
N = 48


def make(kind: str, impl: str = "sdpa"):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=3, max_position_embeddings=256,
                  attn_implementation=impl)
    if kind == "llama":  # 4 q heads / 2 kv heads, head_dim 16
        return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                            **common)).eval()
    # Qwen2: 6 q heads sharing 1 kv head, head_dim 16, qkv bias
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=96, num_attention_heads=6, num_key_value_heads=1, **common)).eval()


SHAPES = {"llama": (4, 2, 16), "qwen2": (6, 1, 16)}


def ids(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def registered() -> set[str]:
    return set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_capture_matches_the_layers(kind, impl):
    model = make(kind, impl)
    x = ids()
    before = registered()
    with torch.inference_mode():
        ref = model(x).logits
    # a recording forward: logits unchanged, and the captured q/k/v reproduce what each layer's attention returned
    with recording(model, outputs=True) as rec, torch.inference_mode():
        logits = model(x).logits
    assert torch.equal(logits, ref)
    assert sorted(rec.qkv) == [0, 1, 2] and rec.implementations == {impl}
    Hq, Hkv, D = SHAPES[kind]
    for layer, (q, k, v) in rec.qkv.items():
        assert q.shape == (1, Hq, N, D) and k.shape == v.shape == (1, Hkv, N, D)
        out = sparsekit.dense_attention(q, k, v, scale=rec.info[layer]["scaling"]).transpose(1, 2)
        torch.testing.assert_close(out, rec.outputs[layer], atol=2e-6, rtol=1e-5)
    # capture_qkv gives the same tensors, and the model is back to its implementation, nothing left registered
    qkv = capture_qkv(model, x)
    assert isinstance(qkv, CapturedQKV) and sorted(qkv) == [0, 1, 2]
    for layer in qkv:
        for a, b in zip(qkv[layer], rec.qkv[layer]):
            assert torch.equal(a, b)
    assert model.config._attn_implementation == impl
    assert registered() == before
    with torch.inference_mode():
        assert torch.equal(model(x).logits, ref)
    meta = qkv.metadata
    assert (meta["model_type"], meta["num_heads"], meta["num_kv_heads"], meta["head_dim"], meta["seq_len"]) == \
        (kind, Hq, Hkv, D, N)
    assert meta["scaling"] == {i: D ** -0.5 for i in range(3)}


def test_queries_are_after_rope():
    """Same token at two positions: after RoPE its query differs; before RoPE (position 0 of each) it would not."""
    model = make("llama")
    x = torch.full((1, 8), 5)
    q, k, _ = capture_qkv(model, x, layers=[0])[0]
    assert not torch.allclose(q[0, :, 0], q[0, :, 3])
    # rotation keeps the norm of each head's vector
    torch.testing.assert_close(q[0, :, 0].norm(dim=-1), q[0, :, 3].norm(dim=-1))
    torch.testing.assert_close(k[0, :, 0].norm(dim=-1), k[0, :, 3].norm(dim=-1))


def test_layers_dtype_device_and_file(tmp_path):
    model = make("qwen2")
    path = tmp_path / "qwen2.safetensors"
    qkv = capture_qkv(model, ids()[0], layers=[2, 0], dtype=torch.bfloat16, device="cpu", path=str(path))
    assert sorted(qkv) == [0, 2]
    assert all(t.dtype == torch.bfloat16 for trio in qkv.values() for t in trio)
    back = load_qkv(str(path))
    assert sorted(back) == [0, 2]
    for layer in qkv:
        for a, b in zip(qkv[layer], back[layer]):
            assert torch.equal(a, b)
    m = back.metadata
    assert m["format"] == "sparsekit.qkv/1" and m["model_type"] == "qwen2" and m["layers"] == [0, 2]
    assert (m["num_heads"], m["num_kv_heads"], m["head_dim"], m["seq_len"]) == (6, 1, 16, N)
    assert m["scaling"] == {0: 0.25, 2: 0.25} and m["dtype"] == "bfloat16"
    one = load_qkv(str(path), layers=[2])
    assert sorted(one) == [2] and torch.equal(one[2][1], qkv[2][1]) and one.metadata["scaling"] == {2: 0.25}
    with pytest.raises(InputError, match="missing"):
        load_qkv(str(path), layers=[1])
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {f"layer{i}.{t}" for i in (0, 2) for t in "qkv"}


def test_save_plain_dict(tmp_path):
    q, k, v = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    save_qkv({3: (q, k, v)}, str(tmp_path / "x.safetensors"))
    back = load_qkv(str(tmp_path / "x.safetensors"))
    assert torch.equal(back[3][0], q) and back.metadata["num_heads"] == 4 and back.metadata["seq_len"] == 10
    assert back.metadata["scaling"] == {3: 8 ** -0.5}


def test_capture_through_sparsekit_hf():
    """A model switched to attn_implementation='sparsekit' is captured too (the wrapper delegates to it)."""
    import sparsekit.hf as skhf
    model = make("llama")
    x = ids()
    with torch.inference_mode():
        ref = model(x).logits
    skhf.enable(model, estimator="proxy", budget="dynamic(gamma=1.0)", kernel="torch", block_q=16, block_k=16,
                min_seq_len=0)
    try:
        qkv = capture_qkv(model, x, layers=[1])
        assert model.config._attn_implementation == "sparsekit"
        assert [r["route"] for r in skhf.stats(model)] == ["sparse", "sparse"]  # layer 2 not reached: stopped early
        assert qkv.metadata["implementation"] == "sparsekit"
    finally:
        skhf.disable(model)
    plain = capture_qkv(model, x, layers=[1])
    for a, b in zip(qkv[1], plain[1]):  # layer 0 ran sparse (full budget) vs SDPA: equal up to rounding
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        assert torch.equal(model(x).logits, ref)


def test_errors(tmp_path):
    model = make("llama")
    with pytest.raises(InputError, match="one sequence"):
        capture_qkv(model, torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(InputError, match="never ran attention"):
        capture_qkv(model, ids(), layers=[7])
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(InputError, match="empty"):
        save_qkv({}, str(tmp_path / "e.safetensors"))
    before = registered()
    with pytest.raises(RuntimeError, match="boom"):
        with recording(model):
            raise RuntimeError("boom")
    assert registered() == before and model.config._attn_implementation == "sdpa"
