"""Tests of the Triton proxy-score kernel (``kernels/proxy_scores``) against its plain-torch twin.

Without a GPU the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 must be set before the
kernel module is imported), so sizes stay small. Accuracy: float32 inputs match the twin within
rtol 1e-4; 16-bit inputs (the kernel rounds the proxy q/k to the input dtype for the tensor-core dot)
err against a float64 reference at most twice as much as plain torch does with the same rounded
proxies. Layouts built by the ``topk`` mask from kernel and twin scores are compared exactly.
"""

from __future__ import annotations

import os

if not os.environ.get("TRITON_INTERPRET") and not __import__("torch").cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import math

import pytest
import torch
import triton
import triton.language as tl

import sparsekit
from sparsekit import AttentionProblem, BlockScores, Budget, ConfigError, UnsupportedError
from sparsekit.kernels.proxy_scores import (
    CAPABILITIES,
    not_supported_reasons,
    proxy_scores,
    proxy_scores_naive,
)
from sparsekit.kernels.proxy_scores import kernel as ps_kernel
from sparsekit.kernels.proxy_scores import op as ps_op
from sparsekit.plugins.common.masks import TopKMask
from sparsekit.plugins.proxyattn.estimator import ProxyEstimator, choose_impl

DEVICE = "cuda" if torch.cuda.is_available() and not ps_op._INTERPRET else "cpu"

CASES = [
    # (B, Hq, Hkv, G, Nq, Nk, D, block_q, block_k, stride, causal, dtype)
    pytest.param(1, 4, 4, 1, 128, 128, 16, 32, 32, 4, True, torch.float32, id="mha-aligned-s4"),
    pytest.param(1, 28, 4, 4, 200, 200, 16, 32, 32, 4, True, torch.float32, id="gqa28/4-G4-ragged"),
    pytest.param(1, 28, 4, 1, 150, 150, 32, 64, 64, 8, True, torch.float32, id="gqa28/4-G1-s8"),
    pytest.param(1, 7, 1, 1, 230, 230, 64, 64, 64, 3, True, torch.float32, id="gqa7/1-s3-ragged"),
    pytest.param(2, 4, 2, 2, 100, 333, 32, 32, 16, 3, True, torch.float32, id="chunked-Nq<Nk-bq>bk"),
    pytest.param(1, 4, 2, 1, 90, 400, 16, 16, 64, 1, True, torch.float32, id="chunked-s1-bq<bk"),
    pytest.param(1, 4, 2, 2, 200, 150, 32, 32, 32, 4, False, torch.float32, id="noncausal-Nq>Nk"),
    pytest.param(1, 8, 8, 8, 130, 130, 16, 16, 16, 40, True, torch.float32, id="G=Hkv-stride>block"),
    pytest.param(1, 8, 2, 1, 256, 256, 64, 64, 32, 4, True, torch.bfloat16, id="bf16-s4"),
    pytest.param(1, 28, 4, 4, 170, 170, 32, 32, 32, 8, True, torch.bfloat16, id="bf16-gqa28/4-G4"),
    pytest.param(1, 4, 2, 1, 120, 300, 32, 32, 64, 3, False, torch.float16, id="fp16-noncausal-chunked"),
]


def make_qk(seed, B, Hq, Hkv, Nq, Nk, D, dtype, q_mult=2.0):
    """q, k in ``dtype`` (on DEVICE) with peaked softmax rows (query scale ``q_mult``)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=gen) * q_mult
    k = torch.randn(B, Hkv, Nk, D, generator=gen)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


def layout_of(scores, counts, Nq, Nk, bq, bk, causal, Hq, Hkv, D):
    """``topk`` layout from scores and a count budget (shapes only read from the problem)."""
    B = scores.shape[0]
    q = torch.zeros(B, Hq, Nq, D, device=scores.device)
    k = torch.zeros(B, Hkv, Nk, D, device=scores.device)
    prob = AttentionProblem.create(q, k, block_q=bq, block_k=bk, causal=causal)
    return TopKMask().build(prob, BlockScores(scores, "mass"), Budget("count", counts))


@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("split", [(0, 1), (0, 2), (2, None)], ids=["one-qblock", "two-qblocks", "split-K-2"])
@pytest.mark.parametrize("B,Hq,Hkv,G,Nq,Nk,D,bq,bk,stride,causal,dtype", CASES)
def test_matches_twin_and_layouts_agree(B, Hq, Hkv, G, Nq, Nk, D, bq, bk, stride, causal, dtype, split, one_pass):
    """Every kernel path: one program per q-block, one program per two q-blocks (their sampled rows in one tile;
    ragged q-block counts leave the second slot empty), and split-K (kv-blocks cut into splits of 2: per-split
    row statistics, combined, then pooled); each walking the keys once (tile row maxima kept in a scratch) or
    twice (the pooling recomputes the scores)."""
    q, k = make_qk(Nq * 7 + Nk + D, B, Hq, Hkv, Nq, Nk, D, dtype)
    kw = dict(groups=G, stride=stride, block_q=bq, block_k=bk, causal=causal)
    out = proxy_scores(q, k, **kw, config={"split_blocks": split[0], "q_blocks": split[1], "one_pass": one_pass})
    twin = proxy_scores_naive(q, k, **kw)  # float32 math on the same (upcast) inputs
    nQb, nKb = math.ceil(Nq / bq), math.ceil(Nk / bk)
    assert out.shape == (B, G, nQb, nKb) and out.dtype == torch.float32
    # the same blocks are -inf (past the causal horizon), all others are probabilities
    assert torch.equal(torch.isneginf(out), torch.isneginf(twin))
    fin = torch.isfinite(twin)
    assert bool(torch.isfinite(out[fin]).all()) and bool(((out[fin] >= 0) & (out[fin] <= 1 + 1e-6)).all())

    if dtype == torch.float32:
        torch.testing.assert_close(out[fin], twin[fin], rtol=1e-4, atol=1e-7)
        # layouts from both score tensors are identical (random per-row counts)
        gen = torch.Generator().manual_seed(1)
        counts = torch.randint(1, nKb + 1, (B, Hq, nQb), generator=gen, dtype=torch.int32).to(DEVICE)
        a = layout_of(out, counts, Nq, Nk, bq, bk, causal, Hq, Hkv, D)
        b = layout_of(twin, counts, Nq, Nk, bq, bk, causal, Hq, Hkv, D)
        assert torch.equal(a.kv_counts, b.kv_counts) and torch.equal(a.kv_indices, b.kv_indices)
    else:
        # plain torch with the proxies rounded to the input dtype, as the kernel's dot sees them
        qp = q.float().unflatten(1, (G, Hq // G)).mean(2).to(dtype)
        kp = k.float().unflatten(1, (G, Hkv // G)).mean(2).to(dtype)
        plain = proxy_scores_naive(qp, kp, **kw)
        ref = proxy_scores_naive(q.double(), k.double(), **kw).double()
        tol = 2 * float((plain.double() - ref)[fin].abs().max()) + 1e-6
        err = float((out.double() - ref)[fin].abs().max())
        assert err <= tol, f"kernel error {err:.3e} > tolerance {tol:.3e}"
        assert float((out - twin)[fin].abs().max()) <= tol + float((twin.double() - ref)[fin].abs().max())


def test_non_contiguous_inputs():
    # [B, N, H, D] memory transposed to [B, H, N, D]: strides, no copies required
    q, k = make_qk(3, 1, 4, 2, 96, 96, 16, torch.float32)
    qt, kt = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    kw = dict(groups=1, stride=4, block_q=32, block_k=32)
    torch.testing.assert_close(proxy_scores(qt, kt, **kw), proxy_scores(q, k, **kw), rtol=0, atol=0)


def test_config_override_matches_default():
    q, k = make_qk(5, 1, 4, 2, 100, 100, 32, torch.float32)
    kw = dict(groups=2, stride=4, block_q=32, block_k=64)
    a = proxy_scores(q, k, **kw)
    b = proxy_scores(q, k, **kw, config={"block_n": 16, "num_warps": 2})
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match=r"config.block_n=48 \(supported: a power of two >= 16 dividing block_k=64\)"):
        proxy_scores(q, k, **kw, config={"block_n": 48})
    with pytest.raises(ValueError, match=r"config keys \['block_m'\]"):
        proxy_scores(q, k, **kw, config={"block_m": 16})
    with pytest.raises(ValueError, match=r"config.split_blocks=-1 \(supported: None for automatic, 0 for no split"):
        proxy_scores(q, k, **kw, config={"split_blocks": -1})


@pytest.mark.parametrize("block_n", [16, 32], ids=["4-tiles-per-block", "1-tile-per-block"])
def test_one_pass_equals_two_passes_bitwise(block_n):
    """The one-pass scratch holds the very row maxima the second walk recomputes: identical results, also with
    several kv-tiles per kv-block and a causal horizon inside a kv-block (tiles past it are never written)."""
    q, k = make_qk(17, 1, 4, 2, 150, 190, 32, torch.float32)
    for causal in (True, False):
        kw = dict(groups=2, stride=3, block_q=32, block_k=64, causal=causal)
        for split, R in ((0, 1), (0, 2), (1, None), (2, None)):
            cfg = {"block_n": block_n, "split_blocks": split, "q_blocks": R}
            two = proxy_scores(q, k, **kw, config={**cfg, "one_pass": False})
            for chunk in (None, 2):  # the pooling's kv-block chunks: one, or several with a ragged last one
                one = proxy_scores(q, k, **kw, config={**cfg, "one_pass": True, "pool_chunk": chunk})
                assert torch.equal(one, two), (causal, split, R, chunk)


def test_program_order_across_groups_is_bitwise_equal():
    """``across_groups`` only changes which program starts when (each computes the same q-blocks of the same
    (batch, group)): bitwise the default order's output, for B > 1 and G > 1, one and two q-blocks per program,
    one and two passes, causal and not, ragged sizes."""
    q, k = make_qk(23, 2, 8, 4, 200, 230, 32, torch.float32)
    for causal in (True, False):
        kw = dict(groups=4, stride=4, block_q=32, block_k=32, causal=causal)
        for R, one_pass in ((1, True), (2, True), (2, False)):
            cfg = {"split_blocks": 0, "q_blocks": R, "one_pass": one_pass}
            want = proxy_scores(q, k, **kw, config={**cfg, "across_groups": False})
            got = proxy_scores(q, k, **kw, config={**cfg, "across_groups": True})
            assert torch.equal(got, want), (causal, R, one_pass)
            assert torch.equal(proxy_scores(q, k, **kw, config=cfg), want)  # the rule's choice (across here)
    with pytest.raises(ValueError, match=r"config.across_groups=1 \(supported: None for automatic, True, False\)"):
        proxy_scores(q, k, groups=4, config={"across_groups": 1})


def test_across_groups_rule():
    """Across groups when there are several (batch, group) rows and all their proxy keys fit in L2 together."""
    from sparsekit.kernels.proxy_scores.op import CPU_L2_BYTES, across_groups_for

    cpu = torch.device("cpu")
    assert CPU_L2_BYTES == 50 << 20
    assert not across_groups_for(1, 1 << 20, 128, 2, cpu)  # one group: nothing to interleave
    assert across_groups_for(4, 32768, 128, 2, cpu)  # Qwen2.5-7B shape at 32K: 32 MiB of bf16 keys
    assert not across_groups_for(4, 131072, 128, 2, cpu)  # at 128K: 128 MiB, one group after another
    assert across_groups_for(2, 16384, 128, 4, cpu) and not across_groups_for(2, 65536, 128, 4, cpu)


def test_one_pass_rule_and_scratch_size():
    # stride 4, 128-token blocks and tiles, two q-blocks per program (64 rows): the packed scratch holds the
    # P (P + 1) tiles the P programs walk per (batch, group) (program p: 2 (p + 1) tiles), 256 bytes each
    def nbytes(groups, n):
        return ps_op.tmax_scratch_bytes(groups, n, n, 128, 128, 32, 2, True)

    K = 1 << 10
    assert nbytes(1, 128 * K) == 512 * 513 * 256 == 67_239_936  # Llama-3.1-8B shape (G=1), 64.1 MiB
    assert nbytes(1, 256 * K) == 1024 * 1025 * 256 == 268_697_600  # 256.3 MiB
    assert nbytes(1, 512 * K) == 2048 * 2049 * 256 == 1_074_266_112  # 1024.5 MiB
    assert nbytes(1, 1024 * K) == 4096 * 4097 * 256 == 4_296_015_872  # 4097 MiB
    assert nbytes(4, 128 * K) == 4 * 67_239_936 and nbytes(4, 256 * K) == 1_074_790_400  # Qwen2.5-7B (G=4): 1025 MiB
    assert ps_op.one_pass_for(nbytes(1, 512 * K)) and ps_op.one_pass_for(nbytes(4, 256 * K))  # under 1.5 GiB
    assert not ps_op.one_pass_for(nbytes(1, 1024 * K)) and not ps_op.one_pass_for(nbytes(4, 512 * K))
    # without causal every program walks every tile: the rectangle
    assert ps_op.tmax_scratch_bytes(4, 256 * K, 256 * K, 128, 128, 32, 2, False) == 4 * 1024 * 2048 * 256
    q, k = make_qk(5, 1, 4, 2, 64, 64, 16, torch.float32)
    with pytest.raises(ValueError, match=r"config.one_pass=1 \(supported: None for automatic, True, False\)"):
        proxy_scores(q, k, config={"one_pass": 1})
    for bad in (3, 0, 512, True):
        with pytest.raises(ValueError, match=rf"config.pool_chunk={bad!r} \(supported: None for automatic, or a "
                                             r"power of two in 1..256\)"):
            proxy_scores(q, k, config={"pool_chunk": bad})
    assert [ps_op.pool_chunk_for(r) for r in (16, 32, 64, 128, 256)] == [128, 128, 64, 32, 16]



def program_tiles_loop(Nq, Nk, bq, bn, R, causal):
    """Per-program kv-tile counts as the kernel's pass 1 decides them, written out independently in plain Python:
    program p scores q-blocks p*R .. p*R+R-1 and walks the tiles up to the keys its last q-block's last row sees
    (bottom-right causal: row r at Nk - Nq + r; none when that is negative; all keys without causal)."""
    n_qb = -(-Nq // bq)
    counts = []
    for p in range(-(-n_qb // R)):
        i_last = min(p * R + R, n_qb) - 1
        last_row = min(i_last * bq + bq, Nq) - 1
        key_end = min(max(last_row + (Nk - Nq) + 1, 0), Nk) if causal else Nk
        counts.append(-(-key_end // bn))
    return counts


def test_packed_scratch_tiles_closed_form_equals_loop():
    """op.tmax_tiles (closed form) == the sum of the per-program tile counts, for small shapes of every kind:
    Nq = 1, Nq < Nk (chunked prefill), Nq > Nk (early programs see no key), ragged Nq / Nk, R = 1, 2, 4."""
    for Nq in (1, 2, 15, 16, 17, 33, 100, 129, 300):
        for Nk in (1, 7, 16, 17, 64, 100, 150, 333):
            for bq in (16, 32, 128):
                for bn in (16, 32, 128):
                    for R in (1, 2, 4):
                        for causal in (True, False):
                            loop = sum(program_tiles_loop(Nq, Nk, bq, bn, R, causal))
                            assert ps_op.tmax_tiles(Nq, Nk, bq, bn, R, causal) == loop, (Nq, Nk, bq, bn, R, causal)
                            assert ps_op.tmax_scratch_bytes(3, Nq, Nk, bq, bn, 16, R, causal) == 4 * 3 * loop * R * 16
    # the long shapes (floor sum over thousands of programs): Llama 1M, two q-blocks per program, and 16-token tiles
    assert ps_op.tmax_tiles(1 << 20, 1 << 20, 128, 128, 2, True) == sum(program_tiles_loop(1 << 20, 1 << 20, 128, 128,
                                                                                            2, True))
    assert ps_op.tmax_tiles(100_003, 250_017, 16, 16, 1, True) == sum(program_tiles_loop(100_003, 250_017, 16, 16, 1,
                                                                                        True))


@triton.jit
def _probe_program_tiles(TILES, BEFORE, n_qb, Nq, Nk, STRIDE: tl.constexpr, N_SAMPLED: tl.constexpr,
                         BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, R: tl.constexpr, CAUSAL: tl.constexpr):
    # the kernel's own per-program tile count and packed offset of program p, as the one-pass kernels compute them
    p = tl.program_id(0)
    _, n = ps_kernel._program_tiles(p, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N, R, CAUSAL)
    tl.store(TILES + p, n)
    tl.store(BEFORE + p, ps_kernel._tiles_before(p, n_qb, Nq, Nk, STRIDE, N_SAMPLED, BLOCK_Q, BLOCK_N, R, CAUSAL))


@pytest.mark.parametrize("Nq,Nk,bq,bn,R,causal", [
    (200, 70, 16, 16, 1, True),  # Nq > Nk: the first programs walk no tile
    (90, 333, 16, 32, 2, True),  # chunked prefill, ragged
    (150, 150, 32, 16, 4, True),  # ragged last program (5 q-blocks, 4 per program)
    (90, 150, 16, 32, 2, False),
    (1, 100, 16, 16, 1, True),
    (1030 * 16 - 5, 1030 * 16 + 9, 16, 256, 1, True),  # 1030 programs: the offset sum takes two chunks of 1024
])
def test_kernel_tile_counts_and_offsets_match_host(Nq, Nk, bq, bn, R, causal):
    """The kernels' per-program tile counts (_program_tiles) and packed offsets (_tiles_before, chunked sum) equal the
    plain-Python loop, and the host's total (op.tmax_tiles) is the sum the kernels lay out."""
    counts = program_tiles_loop(Nq, Nk, bq, bn, R, causal)
    P = len(counts)
    tiles = torch.full((P,), -1, dtype=torch.int32, device=DEVICE)
    before = torch.full((P,), -1, dtype=torch.int64, device=DEVICE)
    _probe_program_tiles[(P,)](tiles, before, -(-Nq // bq), Nq, Nk, STRIDE=4, N_SAMPLED=bq // 4, BLOCK_Q=bq,
                               BLOCK_N=bn, R=R, CAUSAL=causal)
    offsets = [sum(counts[:p]) for p in range(P)]
    assert tiles.cpu().tolist() == counts
    assert before.cpu().tolist() == offsets
    assert ps_op.tmax_tiles(Nq, Nk, bq, bn, R, causal) == offsets[-1] + counts[-1]


PACKED_CASES = [
    # (B, Hq, Hkv, G, Nq, Nk, D, block_q, block_k, stride, causal)
    pytest.param(1, 4, 2, 2, 90, 333, 16, 16, 32, 4, True, id="chunked-Nq<Nk-ragged"),
    pytest.param(2, 2, 2, 2, 150, 150, 16, 16, 32, 3, True, id="ragged-B2-G2"),
    pytest.param(1, 2, 2, 2, 200, 70, 16, 16, 32, 4, True, id="causal-Nq>Nk"),
    pytest.param(1, 2, 1, 1, 1, 100, 16, 16, 32, 4, True, id="Nq=1"),
    pytest.param(1, 2, 2, 2, 90, 150, 16, 16, 32, 4, False, id="noncausal-ragged"),
    pytest.param(1, 2, 1, 1, 128, 128, 16, 16, 32, 4, True, id="aligned"),
]


@pytest.mark.parametrize("path", [(0, 1), (0, 2), (0, 4), (2, None)], ids=["R1", "R2", "R4", "split-K-2"])
@pytest.mark.parametrize("B,Hq,Hkv,G,Nq,Nk,D,bq,bk,stride,causal", PACKED_CASES)
def test_packed_scratch_exact_size_covered_and_bitwise(monkeypatch, B, Hq, Hkv, G, Nq, Nk, D, bq, bk, stride, causal,
                                                       path):
    """The one-pass scratch is allocated at exactly the packed size (the plain-Python loop's tile counts), the
    kernels write every float of it and nothing past it (so the programs' regions tile it without overlap: the
    interpreter runs programs one after another, so an overlap would not show in the scores), and the scores
    equal the two-pass path's bit for bit; programs walk different tile counts (16-token tiles, two per kv-block)."""
    allocated = []
    real = ps_op._tmax_scratch

    def spy(cfg, nbytes, device):
        buf = real(cfg, nbytes, device)
        if buf is None:
            return None
        guarded = torch.full((buf.numel() + 4096,), float("nan"), dtype=torch.float32, device=device)
        allocated.append((nbytes, guarded))
        return guarded[:buf.numel()]

    monkeypatch.setattr(ps_op, "_tmax_scratch", spy)
    q, k = make_qk(Nq * 3 + Nk, B, Hq, Hkv, Nq, Nk, D, torch.float32)
    kw = dict(groups=G, stride=stride, block_q=bq, block_k=bk, causal=causal)
    split, R = path
    cfg = {"block_n": 16, "split_blocks": split, "q_blocks": R}
    two = proxy_scores(q, k, **kw, config={**cfg, "one_pass": False})
    assert not allocated
    one = proxy_scores(q, k, **kw, config={**cfg, "one_pass": True})
    assert torch.equal(one, two)
    assert torch.equal(torch.isneginf(one), torch.isneginf(proxy_scores_naive(q, k, **kw)))
    (nbytes, guarded), = allocated
    rows = (R or 1) * ps_op.pow2_at_least(math.ceil(bq / stride))
    n = B * G * sum(program_tiles_loop(Nq, Nk, bq, 16, R or 1, causal)) * rows
    assert nbytes == 4 * n
    assert not bool(torch.isnan(guarded[:n]).any()), "packed scratch not fully written"
    assert bool(torch.isnan(guarded[n:]).all()), "written past the packed scratch"
    if causal and Nq <= Nk and Nk > 16:  # the packing saves memory: less than the [programs, all tiles] rectangle
        rect = B * G * -(-(-(-Nq // bq)) // (R or 1)) * -(-Nk // bk) * (bk // 16) * rows
        assert n < rect


def test_split_paths_agree_and_split_size_rule():
    # every split size, including one kv-block per split and a split longer than the sequence
    q, k = make_qk(9, 1, 8, 2, 300, 300, 32, torch.float32)
    kw = dict(groups=1, stride=4, block_q=32, block_k=32)
    ref = proxy_scores(q, k, **kw, config={"split_blocks": 0})
    for split in (1, 3, 4, 50):
        out = proxy_scores(q, k, **kw, config={"split_blocks": split})
        assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-8)
    for R in (2, 4):  # q-blocks per program (10 q-blocks: the last program is partly empty)
        out = proxy_scores(q, k, **kw, config={"split_blocks": 0, "q_blocks": R})
        assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-8)
    assert ps_op.q_blocks_for(1024, 32) == 2 and ps_op.q_blocks_for(64, 32) == 1 and ps_op.q_blocks_for(1024, 128) == 1
    with pytest.raises(ValueError, match=r"config.q_blocks=3 \(supported: None for automatic, 1, 2, 4\)"):
        proxy_scores(q, k, **kw, config={"q_blocks": 3})
    # measured rule (op.split_blocks_for): split only long rows with few programs
    assert ps_op.split_blocks_for(256, 256) == 32  # Llama 32K, G=1
    assert ps_op.split_blocks_for(1024, 1024) == 0 and ps_op.split_blocks_for(256, 1024) == 0  # 128K; G=4
    assert ps_op.split_blocks_for(64, 64) == 0  # 8K


def test_not_supported_reasons_name_value_and_fix():
    q = torch.zeros(1, 4, 64, 96)
    k = torch.zeros(1, 3, 64, 96, dtype=torch.float64)
    reasons = not_supported_reasons(q, k, groups=2, stride=0, block_q=48, block_k=128)
    text = "\n".join(reasons)
    assert "head_dim=96 (supported: 16, 32, 64, 128, 256)" in text
    assert "k.dtype=float64 differs from q.dtype=float32" in text
    assert "Hkv=3 does not divide Hq=4" in text
    assert "groups=2 (supported: a divisor of Hkv=3: 1, 3)" in text
    assert "stride=0 (supported: an integer >= 1)" in text
    assert "block_q=48 (supported:" in text
    assert not_supported_reasons(torch.zeros(1, 4, 8, 16), "k") == [
        "k is a str (supported: torch.Tensor): pass a tensor"]
    with pytest.raises(ValueError, match="head_dim=96"):
        proxy_scores(q, k.float(), groups=1)
    assert torch.float32 in CAPABILITIES.dtypes and 128 in CAPABILITIES.head_dims


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(ps_op, "_INTERPRET", False)
    q, k = torch.zeros(1, 2, 32, 16), torch.zeros(1, 2, 32, 16)
    reasons = not_supported_reasons(q, k)
    assert any("device=cpu without TRITON_INTERPRET=1" in r and "impl='torch'" in r for r in reasons)
    prob = AttentionProblem.create(q, k, block_q=16, block_k=16)
    with pytest.raises(UnsupportedError, match=r"(?s)impl='triton' cannot run .*TRITON_INTERPRET=1.*impl='torch'"):
        ProxyEstimator(impl="triton").estimate(prob)
    # auto on CPU never asks the kernel
    assert choose_impl("auto", prob, "proxy", lambda: pytest.fail("auto must not consult the kernel on CPU")) == "torch"


def test_estimator_impl_option():
    assert ProxyEstimator(impl="triton").label == "proxy(g=1,stride=4)"  # tuning option: not in the label
    with pytest.raises(ConfigError, match=r"impl='cuda' is not allowed \(allowed: 'auto', 'torch', 'triton'\)"):
        ProxyEstimator(impl="cuda")
    q, k = make_qk(11, 1, 28, 4, 180, 180, 32, torch.float32)
    prob = AttentionProblem.create(q, k, block_q=32, block_k=32)
    a = ProxyEstimator(g=4, stride=4, impl="triton").estimate(prob)
    b = ProxyEstimator(g=4, stride=4, impl="torch").estimate(prob)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-7)
    assert a.kind == b.kind == "mass" and a.info == b.info


def test_pipeline_plans_equal_with_either_impl():
    q, k = make_qk(13, 1, 8, 2, 300, 300, 32, torch.float32)
    plans = []
    for impl in ("torch", "triton"):
        attn = sparsekit.build(estimator={"name": "proxy", "g": 2, "impl": impl},
                               budget={"name": "dynamic", "gamma": 0.8, "min_budget": 0, "impl": impl},
                               kernel="torch", block_q=32, block_k=32)
        plans.append(attn.plan(q, k))
    a, b = plans
    assert a.name == b.name
    assert torch.equal(a.budget.value, b.budget.value)
    assert torch.equal(a.layout.kv_counts, b.layout.kv_counts) and torch.equal(a.layout.kv_indices, b.layout.kv_indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Hq,G", [(4, 4), (8, 2), (20, 4), (28, 4), (7, 1), (9, 1)], ids=lambda v: str(v))
def test_proxy_query_is_the_sequential_mean_bitwise(Hq, G, dtype):
    """``_proxy_query`` (the split path's kernel 0; the unsplit kernel shares ``_mean_query``) sums the group's
    QH = Hq / G query heads in float32 one head after another, divides by QH and rounds to the input dtype: bitwise
    that, for QH of 1, 2, 4, 5, 7 and 9, on ragged q-blocks; rows a q-block does not sample are zeros (+0.0).
    The contract any rewrite of the prologue (e.g. loads issued several heads at a time) must keep."""
    B, Nq, D, stride, bq = 2, 150, 32, 4, 32
    q, _ = make_qk(29, B, Hq, 1, Nq, 1, D, dtype)
    qh, n_qb, n_sampled = Hq // G, -(-Nq // bq), -(-bq // stride)
    block_s = triton.next_power_of_2(n_sampled)
    qp = torch.full((B * G, n_qb, block_s, D), float("nan"), dtype=dtype, device=q.device)
    ps_kernel._proxy_query[(n_qb, B * G)](q, qp, *q.stride(), G, Nq, qh, n_qb, STRIDE=stride, N_SAMPLED=n_sampled,
                                          BLOCK_S=block_s, HEAD_DIM=D, BLOCK_Q=bq,
                                          UPCAST_DOT=ps_op._INTERPRET and dtype == torch.bfloat16)
    want = torch.zeros_like(qp)
    for i in range(n_qb):
        last = min((i + 1) * bq, Nq) - 1
        rows = [r for r in (last - s * stride for s in range(n_sampled)) if r >= i * bq]
        heads = q[:, :, rows].float().view(B * G, qh, len(rows), D)
        acc = torch.zeros(B * G, len(rows), D, device=q.device)
        for h in range(qh):
            acc = acc + heads[:, h]
        want[:, i, :len(rows)] = (acc / qh).to(dtype)
    assert torch.equal(qp.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if dtype != torch.float32 else torch.int32))
