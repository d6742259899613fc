"""sparsekit.hf on a CUDA GPU: bf16, the Triton kernel chosen by kernel="auto" (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import sparsekit.hf as skhf  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def make():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("side", ["none", "left", "right"])
def test_full_budget_triton_matches_sdpa(side):
    model = make()
    B, N = 2, 1500
    ids = torch.randint(0, 1000, (B, N), device="cuda")
    am = torch.ones(B, N, dtype=torch.long, device="cuda")
    if side == "left":
        am[1, :700] = 0
    elif side == "right":
        am[1, 800:] = 0
    with torch.inference_mode():
        ref = model(ids, attention_mask=am).logits.float()
        skhf.enable(model, "proxyattn", budget={"gamma": 1.0}, kernel="triton", min_seq_len=0)
        out = model(ids, attention_mask=am).logits.float()
    st = skhf.stats(model)
    assert all(r["route"] == "sparse" and r["density"] == 1.0 for r in st)
    assert all(r["kernel"] == "triton" for r in st)
    sel = am.bool()
    assert torch.isfinite(out).all()
    err = (out[sel] - ref[sel]).abs().max().item()
    scale = ref[sel].abs().max().item()
    assert err <= 0.05 * scale, (err, scale)


def test_proxyattn_defaults_sparse_at_8k():
    model = make()
    ids = torch.randint(0, 1000, (1, 8192), device="cuda")
    with torch.inference_mode():
        skhf.enable(model, "proxyattn", budget={"gamma": 0.9, "min_budget": 512})
        out = model(ids, logits_to_keep=1).logits
    assert torch.isfinite(out).all()
    st = skhf.stats(model)
    assert all(r["route"] == "sparse" for r in st)
    assert all(0.0 < r["density"] <= 1.0 and r["kernel"] != "torch" for r in st)  # auto: a GPU kernel


def test_dense_above_runs_sdpa_on_the_gpu():
    model = make()
    ids = torch.randint(0, 1000, (1, 4096), device="cuda")
    with torch.inference_mode():
        ref = model(ids, logits_to_keep=1).logits.float()
        # random weights attend diffusely: the dynamic budget plans ~0.95 of the blocks, above the threshold
        skhf.enable(model, "proxyattn", min_seq_len=0, dense_above=0.5)
        out = model(ids, logits_to_keep=1).logits.float()
    st = skhf.stats(model)
    assert all(r["route"] == "sparse" and r["dense_fallback"] is True and r["kernel"] == "sdpa" for r in st)
    assert all(0.5 <= r["density"] < 1.0 or r["density"] == 1.0 for r in st)
    torch.testing.assert_close(out, ref, atol=2e-2 * ref.abs().max().item(), rtol=0)
