"""``streaming`` mask (A-shape) and preset (plugins/streaming): indices exactly equal a brute-force loop.

Definition: q-block ``i`` with diagonal kv-blocks ``first..last`` (those holding its valid rows' positions,
bottom-right aligned) keeps the sinks ``[0, sink_blocks)`` (visible ones) and the window
``[max(0, min(first, last - local_blocks + 1)), last]``; ascending, distinct; same for every head; padded
q-blocks keep nothing; ``kv_indices.shape[-1]`` = the largest count.
"""

from __future__ import annotations

import math

import pytest
import torch

import sparsekit
from sparsekit import AttentionProblem, BlockLayout, ConfigError
from sparsekit.plugins.streaming.mask import StreamingMask

try:
    from conftest import tolerance
except ImportError:  # pragma: no cover
    from tests.conftest import tolerance


def bf_streaming(Nq, Nk, bq, bk, sink, local, causal=True, q_lens=None, k_lens=None, B=1):
    """Kept blocks per [b][i] (ascending lists), from the definition."""
    out = []
    for b in range(B):
        ql = q_lens[b] if q_lens else Nq
        kl = k_lens[b] if k_lens else Nk
        rows_out = []
        for i in range(math.ceil(Nq / bq)):
            rows = list(range(i * bq, min((i + 1) * bq, ql)))
            if not rows:
                rows_out.append([])
                continue
            pos = [kl - ql + r for r in rows]
            diag = [p // bk for p in pos]
            first, last = max(min(diag), 0), max(max(diag), 0)
            vis = (last + 1) if causal else math.ceil(kl / bk)
            keep = {j for j in range(sink) if j < vis}
            keep |= set(range(max(0, min(first, last - local + 1)), last + 1))
            rows_out.append(sorted(keep))
        out.append(rows_out)
    return out


def rows_of(layout: BlockLayout):
    c, idx = layout.kv_counts, layout.kv_indices
    return [[[idx[b, h, i, : int(c[b, h, i])].tolist() for i in range(c.shape[2])] for h in range(c.shape[1])]
            for b in range(c.shape[0])]


def check_format(layout: BlockLayout) -> None:
    assert layout.kv_counts.dtype == torch.int32 and layout.kv_indices.dtype == torch.int32
    assert layout.max_k == int(layout.kv_counts.max())
    pad = torch.arange(layout.max_k) >= layout.kv_counts[..., None].long()
    assert bool((layout.kv_indices[pad] == 0).all())
    layout.validate()


CASES = [
    # (Nq, Nk, bq, bk, sink, local, causal)
    (128, 128, 16, 16, 1, 3, True),
    (128, 128, 16, 16, 0, 1, True),
    (100, 100, 16, 16, 2, 2, True),
    (40, 300, 16, 16, 1, 4, True),     # chunked prefill, misaligned (300 - 40 = 260)
    (50, 77, 32, 16, 1, 1, True),      # block_q > block_k: window must cover both diagonal blocks
    (64, 200, 16, 32, 3, 2, True),
    (300, 300, 32, 32, 1, 8, True),
    (60, 60, 16, 16, 1, 100, True),    # window larger than the prefix: dense
    (48, 80, 16, 16, 1, 2, False),     # non-causal
    (80, 48, 16, 16, 1, 2, False),     # non-causal, Nq > Nk
]


@pytest.mark.parametrize("Nq,Nk,bq,bk,sink,local,causal", CASES)
def test_indices_equal_brute_force(Nq, Nk, bq, bk, sink, local, causal):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 3, Nq, 16, generator=gen)
    k = torch.randn(1, 3, Nk, 16, generator=gen)
    problem = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    layout = StreamingMask(sink_blocks=sink, local_blocks=local).build(problem, None, None)
    check_format(layout)
    ref = bf_streaming(Nq, Nk, bq, bk, sink, local, causal)
    got = rows_of(layout)
    assert all(got[0][h] == ref[0] for h in range(3))


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_indices_equal_brute_force(causal):
    B, Nq, Nk, bq, bk = 3, 96, 160, 16, 16
    q_lens, k_lens = [96, 37, 5], [160, 37, 100]
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(B, 4, Nq, 16, generator=gen)
    k = torch.randn(B, 2, Nk, 16, generator=gen)
    problem = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal, q_lens=torch.tensor(q_lens),
                                      k_lens=torch.tensor(k_lens))
    layout = StreamingMask(sink_blocks=2, local_blocks=3).build(problem, None, None)
    check_format(layout)
    ref = bf_streaming(Nq, Nk, bq, bk, 2, 3, causal, q_lens, k_lens, B)
    got = rows_of(layout)
    for b in range(B):
        for h in range(4):
            assert got[b][h] == ref[b], (b, h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("Hq,Hkv,Nq,Nk,varlen", [(4, 4, 100, 100, False), (4, 1, 60, 150, False),
                                                 (7, 1, 90, 90, True)], ids=["mha", "gqa4-chunked", "gqa7-varlen"])
def test_preset_at_full_window_equals_dense(dtype, Hq, Hkv, Nq, Nk, varlen):
    gen = torch.Generator().manual_seed(23)
    B = 2 if varlen else 1
    q = torch.randn(B, Hq, Nq, 32, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Nk, 32, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Nk, 32, generator=gen).to(dtype)
    kw = {"q_lens": torch.tensor([Nq, 50]), "k_lens": torch.tensor([Nk, 70])} if varlen else {}
    attn = sparsekit.build("streaming", mask={"local_blocks": 10**6}, kernel="torch", block_q=16, block_k=16)
    out, plan = attn(q, k, v, return_plan=True, **kw)
    assert torch.equal(plan.layout.to_dense(), BlockLayout.full(plan.problem).to_dense())
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double(), **kw)
    naive = sparsekit.dense_attention(q, k, v, compute_dtype=dtype, **kw)
    err = float((out.double() - ref).abs().max())
    assert err <= tolerance(out, naive, ref, 2e-6 if dtype == torch.float32 else 2e-3)


def test_preset_is_sparse_and_needs_nothing():
    attn = sparsekit.build("streaming", block_q=16, block_k=16)
    assert attn.estimator is None and attn.budgeter is None
    assert attn.mask.spec() == {"name": "streaming", "sink_blocks": 1, "local_blocks": 8}
    q = torch.randn(1, 2, 300, 16, generator=torch.Generator().manual_seed(3))
    plan = attn.plan(q, q)
    assert plan.scores is None and plan.budget is None
    assert plan.layout.max_k == 9 and 0 < plan.density < 1


def test_composition_refuses_a_budget():
    with pytest.raises(sparsekit.CompositionError, match="streaming"):
        sparsekit.build(mask="streaming", budget="fixed")


@pytest.mark.parametrize("opt,bad", [("sink_blocks", -1), ("local_blocks", 0), ("local_blocks", 2.0)])
def test_invalid_options(opt, bad):
    with pytest.raises(ConfigError, match=opt):
        sparsekit.build(mask={"name": "streaming", opt: bad})
