"""Conformance: every stage of the default registry (``sparsekit.get_registry()``), in every composition that
``sparsekit.build`` accepts, against the contracts of DESIGN.md sections 2-3 and the exactness rule of section 6.

* Full budget: every mask x kernel (with every estimator where scores are needed and every budget that has a
  known full setting) equals dense attention (``sparsekit.dense_attention`` in float64) within
  :func:`tests.conftest.tolerance`: twice the error plain torch makes in the same dtype, plus a floor.
* Every accepted estimator + budget + mask composition yields a layout that validates, with
  ``kv_indices.shape[-1] == max count``, and every kernel that can run here matches the float64 ``torch`` kernel
  on that same layout within the same rule.
* Per-stage output contracts (dtype, shape, ``-inf`` exactly on invisible blocks, budget ranges).

Kernels that cannot run here are skipped with their ``not_supported_reasons``. Stages of third-party plugins are
picked up with their default options; the few known built-in stages also get extra option variants.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any, ClassVar

import attrs

import pytest
import torch

import sparsekit
from sparsekit import CompositionError

try:  # tests/conftest.py (rootdir conftest, no package): importable as `conftest` under pytest's default import mode
    from conftest import tolerance
except ImportError:  # pragma: no cover - other import modes
    from tests.conftest import tolerance

REG = sparsekit.get_registry()

# extra option variants of known built-in stages (the default instance of every stage is always used)
# (proxy's g/stride variants are covered stage-by-stage in tests/plugins/test_proxyattn.py)
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "fixed": [{"blocks": 2, "ratio": None}],
    "dynamic": [{"gamma": 0.9, "min_budget": 0}],
    "topk": [{"sink": False, "diagonal": False}],
    "flex": [{"compile": False}],  # the eager FlexAttention path runs on CPU (compile=True needs CUDA)
}
# options that make a budget keep every visible block
FULL_BUDGET: dict[str, dict[str, Any]] = {
    "fixed": {"blocks": None, "ratio": 1.0},
    "dynamic": {"gamma": 1.0, "min_budget": 0},
    "cumulative": {"gamma": 1.0, "min_budget": 0, "max_budget": 0},
}
# masks taking no budget: options under which they keep every visible block (causal cases at least);
# "dense" must always be full, other budget-less masks are skipped where their layout is not full
FULL_MASK: dict[str, dict[str, Any]] = {
    "dense": {},
    "streaming": {"sink_blocks": 10**9, "local_blocks": 10**9},
}
FLOOR = {torch.float32: 2e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BLOCK = 32


def stage_instances(kind: str) -> list[sparsekit.Stage]:
    """Default instance (+ known variants) of every registered stage of ``kind``; stages that cannot be created
    with their defaults are left out here and fail ``test_stage_defaults_and_label_round_trip``."""
    out = []
    for name, entry in sorted(REG.stages[kind].items()):
        try:
            out.append(entry.cls.create())
        except Exception:  # noqa: BLE001 - reported by test_stage_defaults_and_label_round_trip
            continue
        out += [entry.cls.create(**opts) for opts in VARIANTS.get(name, [])]
    return out


def label(stage: sparsekit.Stage | None) -> str:
    return "none" if stage is None else stage.label


def dname(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


ESTIMATORS = stage_instances("estimator")
BUDGETS = stage_instances("budget")
MASKS = stage_instances("mask")
KERNEL_NAMES = sorted(REG.stages["kernel"])
KERNELS = [pytest.param(k, id=k.label) for k in stage_instances("kernel")]


# ------------------------------------------------------------------------------------------------
# inputs


class Case:
    def __init__(self, name: str, B: int, Hq: int, Hkv: int, Nq: int, Nk: int, D: int = 32, causal: bool = True,
                 q_lens: list[int] | None = None, k_lens: list[int] | None = None, bshd: bool = False) -> None:
        self.name, self.B, self.Hq, self.Hkv, self.Nq, self.Nk, self.D = name, B, Hq, Hkv, Nq, Nk, D
        self.causal, self.q_lens, self.k_lens, self.bshd = causal, q_lens, k_lens, bshd

    def __repr__(self) -> str:
        return self.name

    def tensors(self, dtype: torch.dtype, seed: int):
        gen = torch.Generator().manual_seed(seed)

        def make(H: int, N: int) -> torch.Tensor:
            if self.bshd:  # [B, N, H, D] storage seen as [B, H, N, D] (non-contiguous, as from transformers)
                return torch.randn(self.B, N, H, self.D, generator=gen).to(dtype).transpose(1, 2)
            return torch.randn(self.B, H, N, self.D, generator=gen).to(dtype)

        q, k, v = make(self.Hq, self.Nq), make(self.Hkv, self.Nk), make(self.Hkv, self.Nk)
        q = q * 1.5  # somewhat peaked attention, so sparse layouts differ from dense ones
        return q, k, v

    def kwargs(self) -> dict[str, Any]:
        lens = (lambda x: None if x is None else torch.tensor(x, dtype=torch.int32))
        return {"causal": self.causal, "q_lens": lens(self.q_lens), "k_lens": lens(self.k_lens)}


CASES = [
    Case("mha-ragged-B2", 2, 2, 2, 200, 200),
    Case("gqa4-chunked", 1, 8, 2, 70, 230),
    Case("gqa7-varlen-B3", 3, 7, 1, 64, 96, q_lens=[64, 45, 20], k_lens=[96, 45, 70]),
    # non-causal: the second sequence has more queries than keys (allowed without causality)
    Case("gqa4-noncausal-varlen", 2, 4, 1, 100, 150, causal=False, q_lens=[64, 100], k_lens=[150, 60]),
    Case("gqa2-bshd-noncontig", 1, 4, 2, 128, 128, bshd=True),
]
# (case, dtype) pairs: every dtype on several cases, every case in at least one dtype
_F32, _BF16, _F16 = torch.float32, torch.bfloat16, torch.float16
CASE_DTYPE_PAIRS = [(CASES[0], _F32), (CASES[0], _F16), (CASES[1], _BF16), (CASES[2], _F32), (CASES[2], _BF16),
                    (CASES[3], _F16), (CASES[4], _BF16)]
CASE_DTYPES = [pytest.param(c, d, id=f"{c.name}-{dname(d)}") for c, d in CASE_DTYPE_PAIRS]
# smaller cases for the composition x kernel product (the Triton interpreter's cost grows with B * Hq * Nq);
# contiguous inputs only: non-contiguous ones are checked stage by stage (test_estimator_accepts_transposed_inputs)
SMALL_PAIRS = [(Case("s-gqa2-varlen-B2", 2, 4, 2, 64, 128, q_lens=[64, 30], k_lens=[128, 50]), _F32),
               (Case("s-gqa7-chunked", 1, 7, 1, 40, 160), _BF16),
               (Case("s-gqa2-noncausal", 1, 4, 2, 64, 100, causal=False), _F16),
               (Case("s-gqa2-aligned", 1, 4, 2, 96, 96), _BF16),
               (Case("s-mha-ragged", 1, 2, 2, 90, 90), _F16)]


def group_param(stage: Any) -> int:
    """Score groups a stage asks for (``g`` option, e.g. proxy): it must divide Hkv."""
    g = getattr(stage, "g", 1)
    return g if isinstance(g, int) and g > 0 else 1


def seed_of(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


# ------------------------------------------------------------------------------------------------
# references


def plain_attention(q, k, v, block_mask: torch.Tensor | None, bq: int, bk: int, *, causal: bool,
                    q_lens=None, k_lens=None, dtype: torch.dtype) -> torch.Tensor:
    """Attention in plain torch math computed in ``dtype`` (matmul, softmax, matmul) under the token mask of a
    bool block mask ``[B, Hq, nQb, nKb]`` (None: dense) plus causality and lengths. Rows seeing nothing give 0."""
    B, Hq, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    grp = Hq // Hkv
    ql = [Nq] * B if q_lens is None else q_lens.tolist()
    kl = [Nk] * B if k_lens is None else k_lens.tolist()
    mask = torch.zeros(B, Hq, Nq, Nk, dtype=torch.bool)
    r = torch.arange(Nq)[:, None]
    c = torch.arange(Nk)[None, :]
    for b in range(B):
        ok = (r < ql[b]) & (c < kl[b])
        if causal:
            ok = ok & (c <= kl[b] - ql[b] + r)
        mask[b] = ok
    if block_mask is not None:
        tok = block_mask.repeat_interleave(bq, 2).repeat_interleave(bk, 3)[:, :, :Nq, :Nk]
        mask &= tok
    qq, kk, vv = q.to(dtype), k.to(dtype).repeat_interleave(grp, 1), v.to(dtype).repeat_interleave(grp, 1)
    s = (qq @ kk.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    out = p @ vv
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros((), dtype=dtype))


def check_close(out: torch.Tensor, naive: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert out.dtype == dtype and tuple(out.shape) == tuple(ref.shape)
    assert bool(torch.isfinite(out).all()), f"{what}: non-finite output"
    err = float((out.double() - ref.double()).abs().max())
    tol = tolerance(out, naive, ref, FLOOR[dtype])
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g}"


def runnable_or_skip(attn: sparsekit.SparseAttention, plan: sparsekit.Plan, v: torch.Tensor) -> None:
    """Skip (with the kernel's reasons) when the chosen kernel cannot run here."""
    kern = attn.kernel
    try:
        reasons = kern.not_supported_reasons(plan.problem, v, plan.layout)
    except ImportError as exc:  # kernel module not written / not importable yet
        reasons = [f"{kern.name}: import failed: {type(exc).__name__}: {exc}"]
    if reasons:
        pytest.skip(f"kernel {kern.name!r} cannot run here: " + "; ".join(reasons))
    assert attn.select_kernel(plan.problem, v, plan.layout) is kern


def check_layout(layout: sparsekit.BlockLayout, plan: sparsekit.Plan) -> None:
    layout.validate()
    p = plan.problem
    assert tuple(layout.kv_counts.shape) == (p.B, p.Hq, p.nQb)
    max_count = int(layout.kv_counts.max()) if layout.kv_counts.numel() else 0
    assert layout.max_k == max_count, f"kv_indices last dim {layout.max_k} != largest count {max_count}"
    assert (layout.Nq, layout.Nk, layout.block_q, layout.block_k, layout.causal) == (p.Nq, p.Nk, p.block_q, p.block_k, p.causal)


# ------------------------------------------------------------------------------------------------
# 1. full budget == dense attention, every mask x kernel


def default_instance(kind: str, name: str) -> Any:
    return REG.get(kind, name).cls.create()


def full_budget_stages(mask: sparsekit.MaskBuilder, *, all_variants: bool) -> list[tuple[Any, Any, Any]]:
    """(estimator, budget, mask) giving ``mask`` a full budget (or full options) and accepted by ``build``."""
    mcls = type(mask)
    if not mcls.needs_budget and not mcls.needs_scores and mask.name in FULL_MASK:
        mask = type(mask).create(**FULL_MASK[mask.name])
    if mcls.needs_scores:
        ests: list[Any] = [e for e in ESTIMATORS if e.produces in mcls.accepts_scores]
        if not all_variants:  # proxy (the reference) where scores are needed, else the first that fits
            ests = [e for e in ests if e.name == "proxy"][:1] or ests[:1]
    else:
        ests = [None]
    buds: list[Any] = [None]
    if mcls.needs_budget:
        buds = [REG.get("budget", n).cls.create(**o) for n, o in FULL_BUDGET.items() if n in REG.stages["budget"]]
        buds = [b for b in buds if b.produces in mcls.accepts_budgets]
        if not all_variants:
            buds = buds[:1]
    out = []
    for est, bud in itertools.product(ests, buds):
        try:
            sparsekit.build(estimator=est, budget=bud, mask=mask, kernel="torch")
        except CompositionError:
            continue
        out.append((est, bud, mask))
    return out


def _full_kernel_params() -> list[Any]:
    out = []
    for name in sorted(REG.stages["mask"]):
        mask = default_instance("mask", name)
        pairs = full_budget_stages(mask, all_variants=False)
        if pairs:
            est, bud, mask = pairs[0]
            out.append(pytest.param(est, bud, mask, id="+".join(label(s) for s in (est, bud, mask))))
        else:
            out.append(pytest.param(None, None, mask, id=f"{mask.label}-no-full-budget", marks=pytest.mark.skip(
                reason=f"no known full-budget composition for mask {mask.label}")))
    return out


def _full_layout_params() -> list[Any]:
    out = []
    for mask in MASKS:
        for est, bud, mask in full_budget_stages(mask, all_variants=True):
            out.append(pytest.param(est, bud, mask, id="+".join(label(s) for s in (est, bud, mask))))
    return out


def full_or_skip(plan: sparsekit.Plan, mask: Any) -> None:
    """Budget-less masks other than ``dense`` may not be full everywhere (e.g. a local window without causality)."""
    full = sparsekit.BlockLayout.full(plan.problem)
    is_full = torch.equal(plan.layout.to_dense(), full.to_dense())
    if not is_full and not type(mask).needs_budget and mask.name != "dense":
        pytest.skip(f"{mask.label} takes no budget and is not full on this case (density {plan.density:.3f})")
    assert torch.equal(plan.layout.kv_counts, full.kv_counts)
    assert is_full
    assert plan.density == pytest.approx(1.0)


@pytest.mark.parametrize("case", [CASES[2], CASES[3]], ids=repr)
@pytest.mark.parametrize("est,bud,mask", _full_layout_params())
def test_full_budget_layout_is_every_visible_block(est, bud, mask, case):
    """Every estimator x full budget x mask keeps exactly the visible blocks (no kernel involved)."""
    if case.Hkv % group_param(est):
        pytest.skip(f"{est.label} needs g | Hkv={case.Hkv}")
    q, k, _ = case.tensors(torch.float32, seed_of("fulllayout", label(est), label(bud), label(mask), case))
    attn = sparsekit.build(estimator=est, budget=bud, mask=mask, kernel="torch", block_q=BLOCK, block_k=BLOCK)
    plan = attn.plan(q, k, **case.kwargs())
    check_layout(plan.layout, plan)
    full_or_skip(plan, mask)


@pytest.mark.parametrize("case,dtype", CASE_DTYPES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("est,bud,mask", _full_kernel_params())
def test_full_budget_equals_dense(est, bud, mask, kernel, case, dtype):
    """Every mask x kernel at full budget equals dense attention within the accuracy rule."""
    q, k, v = case.tensors(dtype, seed_of("full", label(est), label(bud), label(mask), kernel.label, dtype, case))
    kw = case.kwargs()
    attn = sparsekit.build(estimator=est, budget=bud, mask=mask, kernel=kernel, block_q=BLOCK, block_k=BLOCK)
    plan = attn.plan(q, k, **kw)
    check_layout(plan.layout, plan)
    full_or_skip(plan, mask)
    runnable_or_skip(attn, plan, v)
    out, plan2 = attn(q, k, v, return_plan=True, **kw)  # the one-call API: plan + kernel
    assert torch.equal(plan2.layout.kv_indices, plan.layout.kv_indices)
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double(), **kw)
    naive = sparsekit.dense_attention(q, k, v, compute_dtype=dtype, **kw)
    check_close(out, naive, ref, dtype, f"{attn.name} vs dense")


# ------------------------------------------------------------------------------------------------
# 2. every accepted composition: valid layout, every kernel == torch kernel on the layout


def accepted_compositions() -> list[tuple[Any, Any, Any]]:
    out = []
    for est, bud, mask in itertools.product([None, *ESTIMATORS], [None, *BUDGETS], MASKS):
        try:
            sparsekit.build(estimator=est, budget=bud, mask=mask, kernel="torch")
        except CompositionError:
            continue
        out.append((est, bud, mask))
    return out


def _composition_params() -> list[Any]:
    """Each accepted composition on one (case, dtype) pair, rotating through the pairs (the kernel runs are the
    slow part under the Triton interpreter); the estimator's ``g`` must divide the case's Hkv."""
    out = []
    for n, (est, bud, mask) in enumerate(accepted_compositions()):
        order = SMALL_PAIRS[n % len(SMALL_PAIRS):] + SMALL_PAIRS[: n % len(SMALL_PAIRS)]
        case, dtype = next(((c, d) for c, d in order if c.Hkv % group_param(est) == 0), order[0])
        ids = "+".join(label(s) for s in (est, bud, mask))
        out.append(pytest.param(est, bud, mask, case, dtype, id=f"{ids}-{case.name}-{dname(dtype)}"))
    return out


COMPOSITIONS = _composition_params()


def _declared_compatible(est: Any, bud: Any, mask: Any) -> bool:
    """What the stage declarations allow, written independently of build()'s checks."""
    m = type(mask)
    uses_scores = m.needs_scores or (bud is not None and bud.needs_scores)
    if m.needs_scores and (est is None or est.produces not in m.accepts_scores):
        return False
    if m.needs_budget != (bud is not None):
        return False
    if bud is not None and bud.produces not in m.accepts_budgets:
        return False
    if bud is not None and bud.needs_scores and (est is None or est.produces not in bud.accepts_scores):
        return False
    return est is None or uses_scores


def test_build_accepts_exactly_the_declared_compositions_and_names_the_refused_pair():
    n_refused = 0
    for est, bud, mask in itertools.product([None, *ESTIMATORS], [None, *BUDGETS], MASKS):
        want = _declared_compatible(est, bud, mask)
        try:
            sparsekit.build(estimator=est, budget=bud, mask=mask, kernel="torch")
            got, msg = True, ""
        except CompositionError as exc:
            got, msg = False, str(exc)
        assert got == want, (label(est), label(bud), label(mask), msg)
        if not got:
            n_refused += 1
            named = [s.name for s in (est, bud, mask) if s is not None and repr(s.name) in msg]
            assert named and "Fix:" in msg, msg  # names at least one stage of the refused pair and the fix
    assert n_refused > 0


def test_some_compositions_are_accepted():
    names = [p.id for p in COMPOSITIONS]
    assert any("topk" in n for n in names) and any(n.startswith("none+none+dense") for n in names), names
    # the ProxyAttn preset's stages compose
    assert any(n.startswith("proxy(g=1,stride=4)+dynamic(gamma=0.95,min_budget=2048)+topk") for n in names), names


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("est,bud,mask,case,dtype", COMPOSITIONS)
def test_composition_layout_and_kernels(est, bud, mask, case, dtype, kernel):
    q, k, v = case.tensors(dtype, seed_of("comp", label(est), label(bud), label(mask), case, dtype))
    kw = case.kwargs()
    if case.Hkv % group_param(est):
        pytest.skip(f"{est.label} needs g | Hkv={case.Hkv}")
    attn = sparsekit.build(estimator=est, budget=bud, mask=mask, kernel=kernel, block_q=BLOCK, block_k=BLOCK)
    plan = attn.plan(q, k, **kw)
    check_layout(plan.layout, plan)
    # the layout is deterministic: planning again gives the same layout
    again = attn.plan(q, k, **kw).layout
    assert torch.equal(again.kv_counts, plan.layout.kv_counts) and torch.equal(again.kv_indices, plan.layout.kv_indices)
    runnable_or_skip(attn, plan, v)
    out = attn.run(plan, v)
    # reference: the torch kernel on the same layout in float64
    torch_kernel = REG.get("kernel", "torch").cls.create()
    p64 = sparsekit.AttentionProblem.create(q.double(), k.double(), v.double(), block_q=BLOCK, block_k=BLOCK, **kw)
    ref = torch_kernel.forward(p64, v.double(), plan.layout)
    naive = plain_attention(q, k, v, plan.layout.to_dense(), BLOCK, BLOCK, dtype=dtype, **kw)
    # sanity of the yardstick itself: plain fp64 math under the same mask equals the fp64 torch kernel
    exact = plain_attention(q.double(), k.double(), v.double(), plan.layout.to_dense(), BLOCK, BLOCK,
                            dtype=torch.float64, **kw)
    torch.testing.assert_close(ref, exact, rtol=1e-9, atol=1e-9)
    check_close(out, naive, ref, dtype, f"{attn.name} vs fp64 torch kernel on the same layout")


# ------------------------------------------------------------------------------------------------
# 3. per-stage output contracts

ALL_STAGES = [pytest.param(kind, name, id=f"{kind}:{name}")
              for kind in ("estimator", "budget", "mask", "kernel") for name in sorted(REG.stages[kind])]


@attrs.frozen
class _StrOptionMask(sparsekit.MaskBuilder):
    """Throwaway stage with a string option (never registered)."""

    name: ClassVar[str] = "str_option_mask"
    mode: str = "head"


def test_label_with_string_option_round_trips():
    """A string option is quoted in the label, so the label parses back (build accepts labels)."""
    from sparsekit.config import parse_spec

    stage = _StrOptionMask()
    assert parse_spec(stage.label, "mask") == {"name": "str_option_mask", "mode": "head"}


@pytest.mark.parametrize("kind,name", ALL_STAGES)
def test_stage_defaults_and_label_round_trip(kind, name):
    """Every stage is created from its defaults, and its label (the test ids above) parses back to it."""
    from sparsekit.config import parse_spec

    cls = REG.get(kind, name).cls
    for stage in [cls.create()] + [cls.create(**o) for o in VARIANTS.get(name, [])]:
        assert stage.kind == kind and stage.name == name
        spec = parse_spec(stage.label, kind)
        assert spec["name"] == name
        again = cls.create(**{k: v for k, v in spec.items() if k != "name"})
        assert again.label == stage.label
        assert parse_spec(stage.spec(), kind) == stage.spec()



@pytest.mark.parametrize("case", CASES[:4], ids=repr)  # non-contiguous inputs: test_estimator_accepts_transposed_inputs
@pytest.mark.parametrize("est", ESTIMATORS, ids=label)
def test_estimator_contract(est, case):
    if case.Hkv % group_param(est):
        pytest.skip(f"{est.label} needs g | Hkv={case.Hkv}")
    q, k, _ = case.tensors(torch.float32, seed_of("est", est.label, case))
    kw = case.kwargs()
    problem = sparsekit.AttentionProblem.create(q, k, block_q=BLOCK, block_k=BLOCK, **kw)
    for b in range(problem.B):  # estimators without supports_varlen see one trimmed sequence at a time
        p = problem if type(est).supports_varlen else problem.sequence(b)
        scores = est.estimate(p)
        assert isinstance(scores, sparsekit.BlockScores)
        s = scores.scores
        assert s.dtype == torch.float32 and s.shape[0] == p.B and tuple(s.shape[2:]) == (p.nQb, p.nKb)
        assert p.Hq % s.shape[1] == 0
        assert scores.kind == est.produces
        vis = p.visible_mask()[:, None].expand_as(s)
        assert bool(torch.isneginf(s[~vis]).all()), "invisible blocks must be -inf"
        assert not bool(torch.isnan(s).any())
        assert not bool(torch.isneginf(s[vis]).any()), "finite inputs give finite scores on visible blocks"
        if est.produces == "mass":
            assert bool((s[vis] >= 0).all()) and bool((s[vis] <= 1 + 1e-6).all())
        if type(est).supports_varlen:
            break


def _transposed_params() -> list[Any]:
    return [pytest.param(e, id=e.label) for e in ESTIMATORS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dname)
@pytest.mark.parametrize("est", _transposed_params())
def test_estimator_accepts_transposed_inputs(est, dtype):
    """DESIGN.md: [B, N, H, D] inputs are passed as x.transpose(1, 2); scores equal those of contiguous inputs."""
    B, H, Hkv, N, D = 1, 4, 2, 128, 32  # N a multiple of the block: no padding copy hides the strides
    gen = torch.Generator().manual_seed(seed_of("bshd", est.label, dtype))
    q = torch.randn(B, N, H, D, generator=gen).to(dtype).transpose(1, 2)
    k = torch.randn(B, N, Hkv, D, generator=gen).to(dtype).transpose(1, 2)
    assert not q.is_contiguous()
    p_t = sparsekit.AttentionProblem.create(q, k, block_q=BLOCK, block_k=BLOCK)
    p_c = sparsekit.AttentionProblem.create(q.contiguous(), k.contiguous(), block_q=BLOCK, block_k=BLOCK)
    got = est.estimate(p_t).scores
    want = est.estimate(p_c).scores
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("case", CASES[1:4], ids=repr)
@pytest.mark.parametrize("bud", BUDGETS, ids=label)
def test_budget_contract(bud, case):
    q, k, _ = case.tensors(torch.float32, seed_of("bud", bud.label, case))
    problem = sparsekit.AttentionProblem.create(q, k, block_q=BLOCK, block_k=BLOCK, **case.kwargs())
    est = next((e for e in ESTIMATORS if e.produces in bud.accepts_scores and case.Hkv % group_param(e) == 0), None)
    if bud.needs_scores and est is None:
        pytest.skip("no estimator for this budget")
    for b in range(problem.B):
        p = problem if type(bud).supports_varlen else problem.sequence(b)
        scores = est.estimate(p) if est is not None and bud.needs_scores else None
        budget = bud.allocate(p, scores)
        assert budget.kind == bud.produces
        assert tuple(budget.value.shape) == (p.B, p.Hq, p.nQb)
        _, _, visible = p.block_bounds()
        if budget.kind == "count":
            assert budget.value.dtype == torch.int32
            assert bool((budget.value >= 0).all())
            assert bool((budget.value <= visible[:, None, :]).all()), "a count budget never exceeds the visible blocks"
        else:
            assert bool(((budget.value > 0) & (budget.value <= 1)).all())
        if type(bud).supports_varlen:
            break


DENSE_KERNELS = [pytest.param(k, id=k.label) for k in stage_instances("kernel") if type(k).dense]


@pytest.mark.parametrize("kernel", DENSE_KERNELS)
@pytest.mark.parametrize("case,dtype", CASE_DTYPES)
def test_dense_kernel_runs_without_a_layout(kernel, case, dtype):
    """A kernel declaring ``dense = True`` (the ``dense_above`` fallback) runs ``layout=None`` as dense attention."""
    q, k, v = case.tensors(dtype, seed_of("dense-kernel", kernel.label, dtype, case))
    kw = case.kwargs()
    problem = sparsekit.AttentionProblem.create(q, k, v, block_q=BLOCK, block_k=BLOCK, **kw)
    reasons = kernel.not_supported_reasons(problem, v, None)
    if reasons:
        pytest.skip(f"dense kernel {kernel.name!r} cannot run here: " + "; ".join(reasons))
    out = kernel.forward(problem, v, None)
    ref = sparsekit.dense_attention(q.double(), k.double(), v.double(), **kw)
    naive = sparsekit.dense_attention(q, k, v, compute_dtype=dtype, **kw)
    check_close(out, naive, ref, dtype, f"{kernel.label} (layout=None) vs dense")


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_kernel_declares_capabilities(kernel):
    kern = REG.get("kernel", kernel).cls.create()
    caps = type(kern).capabilities
    assert isinstance(caps, sparsekit.Capabilities) and caps.dtypes and caps.devices
    assert isinstance(caps.describe(), str)
    q = torch.randn(1, 2, 40, 32)
    k = torch.randn(1, 2, 40, 32)
    problem = sparsekit.AttentionProblem.create(q, k, k, block_q=BLOCK, block_k=BLOCK)
    reasons = kern.not_supported_reasons(problem, k, None)
    assert isinstance(reasons, list) and all(isinstance(r, str) and r for r in reasons)
    # an unsupported dtype is refused with a reason naming the field and the value
    if torch.float64 not in caps.dtypes:
        p64 = sparsekit.AttentionProblem.create(q.double(), k.double(), k.double(), block_q=BLOCK, block_k=BLOCK)
        reasons = kern.not_supported_reasons(p64, k.double(), None)
        assert any("dtype" in r and "float64" in r for r in reasons), reasons
