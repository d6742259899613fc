"""sparsekit.hf's attention and mask functions called directly, as transformers calls them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import sparsekit  # noqa: E402
import sparsekit.hf as skhf  # noqa: E402
from transformers import AttentionInterface, LlamaConfig  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

FULL = dict(estimator="proxy", budget="dynamic(gamma=1.0)", kernel="torch", block_q=16, block_k=16, min_seq_len=0)


class FakeAttention(torch.nn.Module):
    def __init__(self, config, layer_idx=0, hq=4, hkv=2):
        super().__init__()
        self.config, self.layer_idx, self.is_causal = config, layer_idx, True
        self.num_key_value_groups = hq // hkv


def qkv(B, Nq, Nk, hq=4, hkv=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, hq, Nq, D, generator=g), torch.randn(B, hkv, Nk, D, generator=g),
            torch.randn(B, hkv, Nk, D, generator=g))


@pytest.fixture
def module():
    config = LlamaConfig(num_attention_heads=4, num_key_value_heads=2, hidden_size=64)
    skhf.configure(config, **FULL)
    return FakeAttention(config)


def test_registered_under_sparsekit():
    assert AttentionInterface()["sparsekit"] is skhf.attention_forward
    assert AttentionMaskInterface()["sparsekit"] is skhf.mask_function


def _masks(B, Nq, Nk, padding, q_offset):
    kw = dict(batch_size=B, q_length=Nq, kv_length=Nk, q_offset=q_offset, kv_offset=0, attention_mask=padding)
    return skhf.mask_function(**kw), sdpa_mask(**kw, allow_is_causal_skip=False)


@pytest.mark.parametrize("case", ["left", "right", "holes", "chunk-left", "static-tail"])
def test_matches_sdpa_and_zeroes_padded_rows(module, case):
    B, Nq, Nk, q_off = 3, 48, 48, 0
    pad = torch.ones(B, Nk, dtype=torch.bool)
    if case == "left":
        pad[1, :20] = False
        pad[2, :47] = False
    elif case == "right":
        pad[1, 30:] = False
        pad[2, 1:] = False
    elif case == "holes":  # padding inside a sequence (e.g. right-padded first chunk + second chunk)
        pad[1, 10:17] = False
        pad[2, 40:] = False
    elif case == "chunk-left":  # second chunk of 16 over 64 keys; sequence 2 is still all padding
        Nq, Nk, q_off = 16, 64, 48
        pad = torch.ones(B, Nk, dtype=torch.bool)
        pad[1, :30] = False
        pad[2, :] = False
    elif case == "static-tail":  # static cache: 64 slots, 40 written, queries at [24, 40)
        Nq, Nk, q_off = 16, 64, 24
        pad = torch.ones(B, 40, dtype=torch.bool)
        pad[1, :5] = False
    q, k, v = qkv(B, Nq, Nk)
    mask, dense_mask = _masks(B, Nq, Nk, pad, q_off)
    assert isinstance(mask, skhf.SparsekitMask)
    out, weights = skhf.attention_forward(module, q, k, v, mask, scaling=0.25)
    assert weights is None and out.shape == (B, Nq, 4, 16) and torch.isfinite(out).all()
    ref, _ = sdpa_attention_forward(module, q, k, v, dense_mask, scaling=0.25)
    full_pad = torch.nn.functional.pad(pad, (0, Nk - pad.shape[1]))
    q_valid = full_pad[:, q_off: q_off + Nq]
    torch.testing.assert_close(out[q_valid], ref[q_valid], atol=1e-5, rtol=1e-5)
    assert (out[~q_valid] == 0).all()


def test_no_mask_is_bottom_right_causal(module):
    q, k, v = qkv(2, 20, 50)
    out, _ = skhf.attention_forward(module, q, k, v, None, scaling=None)
    ref = sparsekit.dense_attention(q, k, v, causal=True).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_sdpa_route_is_transformers_sdpa(module):
    """Dense routes (decoding, short) return exactly what transformers' SDPA function returns."""
    skhf.configure(module.config, **{**FULL, "min_seq_len": 10_000})
    for Nq, Nk in ((1, 40), (40, 40), (8, 40)):
        q, k, v = qkv(2, Nq, Nk)
        pad = torch.ones(2, Nk, dtype=torch.bool)
        pad[1, :3] = False
        mask, dense_mask = _masks(2, Nq, Nk, pad, Nk - Nq)
        out, _ = skhf.attention_forward(module, q, k, v, mask, scaling=0.25)
        ref, _ = sdpa_attention_forward(module, q, k, v, dense_mask, scaling=0.25)
        assert torch.equal(out, ref)


def test_non_causal_mask_patterns_get_sdpa_masks():
    from transformers.masking_utils import sliding_window_causal_mask_function
    fn = sliding_window_causal_mask_function(8)
    got = skhf.mask_function(batch_size=1, q_length=32, kv_length=32, mask_function=fn, local_size=8)
    assert isinstance(got, torch.Tensor) and got.shape == (1, 1, 32, 32)


def test_gradients_route_to_sdpa(module):
    q, k, v = qkv(1, 32, 32)
    q.requires_grad_(True)
    with torch.enable_grad():
        out, _ = skhf.attention_forward(module, q, k, v, None, scaling=None)
        out.sum().backward()
    assert q.grad is not None
