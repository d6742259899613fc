"""Probe: where the host time of one sparse-kernel call and of one ProxyAttn plan goes.

Part 1 (kernel, 8K, Llama shape, per-head scattered blocks at density 0.1): host microseconds per call of
``block_sparse_attention`` with prepared calls and direct launches (the default), with Triton's JIT launch
(``FAST_LAUNCH`` off), and with neither (the cache cleared before each call); some pieces alone (input checks, the
call key, device contexts, a 3-argument Triton kernel); then a ``cProfile`` of whole calls.

Part 2 (planning, 32K, Llama and Qwen shapes): host microseconds per ``attn.plan(timed=False)`` and per stage, with
direct launches and with Triton's JIT launch, and a ``cProfile`` of whole plans.

    python benchmarks/probes/launch_host_cost.py --out o.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import device_meta, host_us  # noqa: E402

HQ, HKV, D, BLOCK = 32, 8, 128, 128


def per_call_us(fn, calls: int = 2000) -> float:
    """Host time per call of a piece that launches nothing (or little)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def profile_top(fn, calls: int, lines: int = 28) -> str:
    fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(lines)
    return s.getvalue()


def kernel_part(n: int, rows: list, texts: dict) -> None:
    import triton
    import triton.language as tl

    from bench_kernel import make_layout
    from sparsekit.kernels import _launch
    from sparsekit.kernels.block_sparse import block_sparse_attention
    from sparsekit.kernels.block_sparse import op as bs_op

    torch.manual_seed(0)
    q = torch.randn(1, HQ, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    counts, idx, _ = make_layout(n, 0.1, seed=1100, device="cuda", share="head")

    def full():
        return block_sparse_attention(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK, causal=True, out=out)

    def uncached():
        bs_op.clear_call_cache()
        return full()

    full()
    torch.cuda.synchronize()
    pieces = {"full_call": host_us(full, 500)}
    _launch.FAST_LAUNCH = False
    pieces["full_call_jit_launch"] = host_us(uncached, 500)  # validation + JIT launch every call (the old path)
    bs_op.clear_call_cache()
    full()
    pieces["full_call_prepared_jit_launch"] = host_us(full, 500)  # prepared call, Triton's JIT launch
    _launch.FAST_LAUNCH = True
    bs_op.clear_call_cache()
    full()
    full()
    pieces["full_call_again"] = host_us(full, 500)
    pieces["not_supported_reasons"] = per_call_us(
        lambda: bs_op.not_supported_reasons(q, k, v, counts, idx, block_q=BLOCK, block_k=BLOCK))
    pieces["call_key"] = per_call_us(
        lambda: bs_op._call_key(q, k, v, counts, idx, None, None, out, BLOCK, BLOCK, True, False, None, None))
    (prep,) = bs_op._PREPARED.values()
    texts["kernel_launch_direct"] = str(prep.launch.compiled is not None)

    def ctx():
        with torch.cuda.device(q.device):
            pass

    pieces["torch_cuda_device_ctx"] = per_call_us(ctx)
    pieces["on_device_ctx"] = per_call_us(lambda: _launch.on_device(q.device).__enter__())

    @triton.jit
    def _tiny(x_ptr, y_ptr, n_el, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n_el), mask=offs < n_el)

    x = torch.randn(1024, device="cuda")
    y = torch.empty_like(x)
    pieces["tiny_triton_kernel_jit"] = host_us(lambda: _tiny[(4,)](x, y, 1024, BLOCK_SIZE=256), 500)
    pieces["tiny_triton_kernel_launch"] = host_us(
        lambda: _launch.launch(_tiny, (4,), (x, y, 1024), dict(BLOCK_SIZE=256), num_warps=4, device=x.device), 500)
    pieces["torch_add_"] = host_us(lambda: y.add_(x), 500)
    for name, us in pieces.items():
        rows.append(dict(part="kernel", n=n, piece=name, host_us=us))
    texts["kernel_cprofile"] = profile_top(full, 300)


def planning_part(n: int, shape: str, rows: list, texts: dict) -> None:
    import bench_planning as bp

    q, k, v, _, _ = bp.make_inputs(shape, n, 131072)
    attn = bp.build(shape, "auto")
    for _ in range(20):
        attn.plan(q, k)
    torch.cuda.synchronize()
    problem = attn.problem(q, k)
    scores = attn.estimator.estimate(problem)
    budget = attn.budgeter.allocate(problem, scores)
    from sparsekit.kernels import _launch

    fns = {"plan": lambda: attn.plan(q, k, timed=False), "problem": lambda: attn.problem(q, k),
           "estimate": lambda: attn.estimator.estimate(problem),
           "budget": lambda: attn.budgeter.allocate(problem, scores),
           "mask": lambda: attn.mask.build(problem, scores, budget)}
    for fast in (True, False):
        _launch.FAST_LAUNCH = fast
        for name, fn in fns.items():
            rows.append(dict(part="planning", shape=shape, n=n, piece=name if fast else name + "_jit_launch",
                             host_us=host_us(fn, 200)))
    _launch.FAST_LAUNCH = True
    texts[f"plan_cprofile_{shape}"] = profile_top(lambda: attn.plan(q, k, timed=False), 100, 40)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel-n", type=int, default=8192)
    ap.add_argument("--plan-n", type=int, default=32768)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows: list = []
    texts: dict = {}
    kernel_part(args.kernel_n, rows, texts)
    for shape in ("llama-3.1-8b", "qwen2.5-7b"):
        planning_part(args.plan_n, shape, rows, texts)
    for name, t in texts.items():
        print(f"==== {name}\n{t}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(meta=device_meta(), rows=rows, texts=texts), indent=1))
    print("| part | shape | N | piece | host us |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        us = r.get("host_us")
        print(f"| {r['part']} | {r.get('shape', '-')} | {r['n']} | {r['piece']} | "
              f"{'%.1f' % us if us is not None else r.get('count')} |")


if __name__ == "__main__":
    main()
