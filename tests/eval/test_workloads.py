"""SyntheticWorkload: seeded, backward compatible, and every pattern it claims is visible in the true attention."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from sparsekit.workloads import SyntheticWorkload

SMALL = dict(n=512, heads=4, kv_heads=2, head_dim=64, window=32, needle_rows=32, vertical_tokens=4, needles=2, seed=0)


def probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """True causal softmax attention ``[B, Hq, N, N]`` in float64."""
    B, H, N, D = q.shape
    kk = k.repeat_interleave(H // k.shape[1], 1)
    s = q.double() @ kk.double().transpose(-1, -2) / math.sqrt(D)
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    return torch.softmax(s.masked_fill(~causal, float("-inf")), -1)


@pytest.fixture(scope="module")
def small():
    q, k, v, info = SyntheticWorkload(**SMALL).generate_with_info()
    return q, k, v, info, probs(q, k)


def test_seeds_reproduce():
    a = SyntheticWorkload(**SMALL).generate()
    b = SyntheticWorkload(**SMALL).generate()
    c = SyntheticWorkload(**{**SMALL, "seed": 1}).generate()
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert not torch.equal(x, z)
    for kw in ({"shared_needles": True}, {"slash_offsets": (100,)}):
        a = SyntheticWorkload(**SMALL, **kw).generate()
        b = SyntheticWorkload(**SMALL, **kw).generate()
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_defaults_unchanged():
    """Values pinned from the generator before the new knobs existed: defaults must reproduce them."""
    wl = SyntheticWorkload(n=256, heads=4, kv_heads=2, head_dim=32, window=32, needle_rows=16, vertical_tokens=4,
                           needles=2, batch=2, seed=3)
    q, k, v = wl.generate()
    assert q.shape == (2, 4, 256, 32) and k.shape == v.shape == (2, 2, 256, 32)
    sums = [float(t.double().abs().sum()) for t in (q, k, v)]
    assert sums == pytest.approx([99196.1904, 33973.7963, 26150.044], rel=1e-6)
    torch.testing.assert_close(q[0, 1, 5, :3], torch.tensor([1.992156982421875, 1.8233407735824585,
                                                             1.8918914794921875]))
    torch.testing.assert_close(k[-1, -1, -1, -3:], torch.tensor([-0.25483521819114685, 0.7768268585205078,
                                                                -0.7054070234298706]))
    # the explicit defaults of the new knobs give the same tensors
    q2, k2, v2 = SyntheticWorkload(**{**attrs.asdict(wl), "shared_needles": False, "slash_offsets": ()}).generate()
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)


def test_sink(small):
    *_, p = small
    rows = p[..., 64:, :]
    sink = rows[..., 0].mean()
    uniform = (1.0 / torch.arange(65, 513, dtype=torch.float64)).mean()
    assert sink > 10 * uniform
    assert sink > rows[..., 1:32].mean() * 10  # far more than the other early keys


def test_local_window(small):
    *_, p = small
    N = p.shape[-1]
    i = torch.arange(N)
    d = i[:, None] - i[None, :]
    near = ((d >= 0) & (d < SMALL["window"] // 2)).double()
    assert float((p * near)[..., 64:, :].sum(-1).mean()) > 0.5  # most mass within half a window of the diagonal


def test_vertical_tokens(small):
    *_, info, p = small
    N = p.shape[-1]
    for h in range(SMALL["heads"]):
        vt = info.vertical[0, h // 2]
        far = vt[vt < N - 256]  # keys far from the rows looked at
        rows = p[0, h, N - 160:info.needle_row_start]  # rows without needle queries
        others = torch.ones(N, dtype=torch.bool)
        others[vt] = False
        others[0] = False
        others[info.needles[0, h // 2]] = False
        others[N - 256:] = False
        assert len(far) > 0
        assert rows[:, far].mean() > 20 * rows[:, others].mean()


def test_needles(small):
    *_, info, p = small
    N = p.shape[-1]
    start = info.needle_row_start
    assert start == N - SMALL["needle_rows"]
    checked = 0
    for h in range(SMALL["heads"]):
        nd = info.needles[0, h // 2]
        assert (nd < N - 2 * SMALL["window"]).all()
        nd = nd[nd < start - 128]  # away from the local window of the rows compared
        if len(nd) == 0:
            continue
        on_needles = p[0, h, start:, nd].mean()            # needle rows
        before = p[0, h, start - 64:start, nd].mean()       # rows just before: no needle query
        assert on_needles > 0.02 and on_needles > 20 * before
        checked += 1
    assert checked >= 2


def test_independent_needles_by_default():
    _, _, _, info = SyntheticWorkload(**{**SMALL, "kv_heads": 4, "heads": 8}).generate_with_info()
    assert not all(torch.equal(info.needles[0, 0], info.needles[0, h]) for h in range(1, 4))


def test_shared_needles_survive_a_one_group_proxy():
    """shared_needles: every KV head has the same needle/vertical positions, so the mean query of all heads
    against the mean key (ProxyAttn with G=1) still finds the needles; with independent needles it cannot."""
    mass = {}
    for shared in (False, True):
        q, k, _, info = SyntheticWorkload(**{**SMALL, "kv_heads": 4, "heads": 8,
                                            "shared_needles": shared}).generate_with_info()
        if shared:
            for h in range(1, 4):
                assert torch.equal(info.needles[:, 0], info.needles[:, h])
                assert torch.equal(info.vertical[:, 0], info.vertical[:, h])
        p = probs(q.mean(1, keepdim=True), k.mean(1, keepdim=True))
        nd = info.needles[0].flatten().unique()
        mass[shared] = float(p[0, 0, info.needle_row_start:, nd].sum(-1).mean())
    assert mass[True] > 0.1
    assert mass[True] > 20 * mass[False]


def test_slash_offsets():
    o = 200
    q, k, _, info = SyntheticWorkload(**{**SMALL, "slash_offsets": (o,)}).generate_with_info()
    assert info.slash_offsets == (o,)
    p = probs(q, k)
    rows = torch.arange(300, SMALL["n"])

    def diag(off: int) -> float:
        return float(p[0, :, rows, rows - off].mean())

    assert diag(o) > 20 * diag(o - 50) and diag(o) > 20 * diag(o + 50)
    base = probs(*SyntheticWorkload(**SMALL).generate()[:2])
    assert diag(o) > 20 * float(base[0, :, rows, rows - o].mean())  # not there without the knob


def test_slash_offsets_validated():
    with pytest.raises(ValueError, match="slash_offsets"):
        SyntheticWorkload(slash_offsets=(0,))
    assert SyntheticWorkload(slash_offsets=64).slash_offsets == (64,)
    with pytest.raises(ValueError, match="local_logit"):
        SyntheticWorkload(n=64, local_logit=0.0, slash_offsets=(8,)).generate()
