"""Probe: the ``dynamic`` budget stage with the fused mass-to-budget kernel vs the torch arithmetic after the
Triton mass (same inputs, same run), Llama-3.1-8B shape; checks both give the same budget."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402
import triton  # noqa: E402

import bench_planning as bp  # noqa: E402
from sparsekit.plugins.proxyattn import budget as budget_mod  # noqa: E402

for n in (32768, 131072):
    q, k, v, gen, _ = bp.make_inputs("llama-3.1-8b", n, 131072)
    attn = bp.build("llama-3.1-8b", "auto")
    problem = attn.problem(q, k)
    bud = attn.budgeter
    fused = bud.allocate(problem, None)
    ms_fused = triton.testing.do_bench(lambda: bud.allocate(problem, None))
    orig = budget_mod._mass_budget_reasons
    budget_mod._mass_budget_reasons = lambda *a: ["probe: torch arithmetic"]
    try:
        torch_arith = bud.allocate(problem, None)
        ms_torch = triton.testing.do_bench(lambda: bud.allocate(problem, None))
    finally:
        budget_mod._mass_budget_reasons = orig
    same = torch.equal(fused.value, torch_arith.value) and torch.equal(fused.info["ratio"], torch_arith.info["ratio"])
    ms_plan = triton.testing.do_bench(lambda: attn.plan(q, k, timed=False))
    print(f"N={n}: budget fused {ms_fused:.3f} ms, torch arithmetic {ms_torch:.3f} ms, same={same}; "
          f"plan (fused) {ms_plan:.3f} ms")
    del q, k, v
    torch.cuda.empty_cache()
