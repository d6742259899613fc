"""Bad inputs get errors naming the argument, the value, what is allowed and the fix."""

from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit import ConfigError, InputError


def qkv(B=1, Hq=4, Hkv=2, Nq=64, Nk=64, D=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, Hq, Nq, D, generator=g, dtype=dtype), torch.randn(B, Hkv, Nk, D, generator=g, dtype=dtype),
            torch.randn(B, Hkv, Nk, D, generator=g, dtype=dtype))


@pytest.fixture(scope="module")
def attn():
    return sparsekit.build("proxyattn", kernel="torch", block_q=16, block_k=16)


def expect(exc, *words):
    def check(excinfo):
        msg = str(excinfo.value)
        for w in words:
            assert w in msg, f"{w!r} not in {msg!r}"
        assert "Fix" in msg or "fix" in msg.lower(), msg
    return exc, check


@pytest.mark.parametrize("case, words", [
    ("rank", ["q.shape", "4 dims"]),
    ("heads", ["k.shape[1]", "3", "divisor"]),
    ("devices_dtype", ["k.dtype", "float16"]),
    ("head_dim", ["k.shape[3]", "8"]),
    ("nq_gt_nk", ["q_lens", "64"]),
    ("empty", ["q.shape", "empty"]),
    ("batch", ["k.shape[0]"]),
    ("v_shape", ["v.shape"]),
    ("int_dtype", ["q.dtype"]),
    ("lens_zero", ["q_lens", "empty"]),
    ("lens_float", ["k_lens", "integer"]),
    ("lens_too_long", ["k_lens", "65"]),
])
def test_bad_tensors(attn, case, words):
    q, k, v = qkv()
    kwargs = {}
    if case == "rank":
        q = q[0]
    elif case == "heads":
        k, v = k[:, :1].expand(1, 3, 64, 16).contiguous(), v[:, :1].expand(1, 3, 64, 16).contiguous()
    elif case == "devices_dtype":
        k = k.half()
    elif case == "head_dim":
        k = k[..., :8]
    elif case == "nq_gt_nk":
        k, v = k[:, :, :32], v[:, :, :32]
        words = ["q_lens", "64", "32"]
    elif case == "empty":
        q = q[:, :, :0]
    elif case == "batch":
        k = torch.cat([k, k])
    elif case == "v_shape":
        v = v[:, :, :10]
    elif case == "int_dtype":
        q = q.to(torch.int32)
    elif case == "lens_zero":
        kwargs = {"q_lens": torch.tensor([0])}
    elif case == "lens_float":
        kwargs = {"k_lens": torch.tensor([3.0])}
    elif case == "lens_too_long":
        kwargs = {"k_lens": torch.tensor([65])}
    with pytest.raises(InputError) as ei:
        attn(q, k, v, **kwargs)
    msg = str(ei.value)
    for w in words:
        assert w in msg, msg
    assert "Fix:" in msg


@pytest.mark.parametrize("bad", [48, 100, 0, 1024, True])
def test_block_sizes_must_be_powers_of_two(bad):
    with pytest.raises(ConfigError, match=f"block_q={bad!r}"):
        sparsekit.build("proxyattn", block_q=bad)


@pytest.mark.parametrize("spec, words", [
    ("dynamic(gamma=0)", ["gamma=0", "(0, 1]"]),
    ("dynamic(gamma=1.5)", ["gamma=1.5"]),
    ("dynamic(min_budget=-1)", ["min_budget=-1"]),
    ("fixed(ratio=2.0)", ["ratio=2.0"]),
    ("fixed(blocks=4)", ["exactly one"]),  # ratio keeps its default 0.1
])
def test_bad_budget_options(spec, words):
    with pytest.raises(ConfigError) as ei:
        sparsekit.build(estimator="proxy", budget=spec)
    for w in words:
        assert w in str(ei.value)


@pytest.mark.parametrize("spec", ["proxy(stride=0)", "proxy(g=0)", "proxy(stride=1.5)"])
def test_bad_estimator_options(spec):
    with pytest.raises(ConfigError, match="integer >= 1"):
        sparsekit.build(estimator=spec, budget="dynamic")


def test_groups_must_divide_kv_heads():
    attn = sparsekit.build(estimator="proxy(g=3)", budget="dynamic", kernel="torch", block_q=16, block_k=16)
    q, k, v = qkv(Hq=8, Hkv=4)
    with pytest.raises(InputError, match=r"g=3 does not divide the 4 KV heads \(allowed: \[1, 2, 4\]\)"):
        attn(q, k, v)


def test_scale_must_be_positive(attn):
    q, k, v = qkv()
    with pytest.raises(InputError, match="scale=-1.0"):
        attn(q, k, v, scale=-1.0)


def test_nan_inputs_propagate_by_default_and_are_refused_on_request():
    q, k, v = qkv()
    v = v.clone()
    v[0, 0, 20] = float("nan")  # in kv-block 1 (keys 16..31): every row whose kept blocks include it
    dense = sparsekit.build("dense", kernel="torch", block_q=16, block_k=16)
    out = dense(q, k, v)
    assert torch.isnan(out[0, :2, 16:]).all() and not torch.isnan(out[0, :2, :16]).any()
    assert not torch.isnan(out[0, 2:]).any()  # other KV group untouched
    strict = sparsekit.build("dense", kernel="torch", block_q=16, block_k=16, check_finite=True)
    with pytest.raises(InputError, match="v contains NaN or inf"):
        strict(q, k, v)


def test_nan_scores_rank_lowest_in_topk():
    q, k, v = qkv(Nq=128, Nk=128)
    q = q.clone()
    q[0, :, 40] = float("nan")  # NaN proxy scores for the q-block holding row 40
    attn = sparsekit.build(estimator="proxy", budget="fixed(ratio=0.5)", kernel="torch", block_q=16, block_k=16,
                           validate=True)
    plan = attn.plan(q, k)  # must still be a valid layout
    assert plan.layout.num_kept() > 0
