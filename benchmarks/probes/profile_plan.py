"""Probe: where ProxyAttn planning time goes at 32K (CPU launch vs GPU), and the kernel's fixed cost per program."""
import sys, time, os
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch
from torch.profiler import profile, ProfilerActivity
import bench_planning as bp
from sparsekit.kernels.block_sparse.op import block_sparse_attention
import triton

def profile_planning():
    n = 32768
    q, k, v, gen, _ = bp.make_inputs("llama-3.1-8b", n, 131072)
    attn = bp.build("llama-3.1-8b", "auto")
    problem = attn.problem(q, k)
    est, bud, mask = attn.estimator, attn.budgeter, attn.mask
    for _ in range(3):
        attn.plan(q, k)
    torch.cuda.synchronize()

    def wall(fn, reps=50):
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps * 1e3

    def cpu_only(fn, reps=50):
        # CPU time to enqueue (GPU not waited for, except internal syncs)
        torch.cuda.synchronize(); tot = 0.0
        for _ in range(reps):
            t = time.perf_counter(); fn(); tot += time.perf_counter() - t
            torch.cuda.synchronize()
        return tot / reps * 1e3

    scores = est.estimate(problem); budget = bud.allocate(problem, scores)
    for name, fn in [("estimate", lambda: est.estimate(problem)), ("budget", lambda: bud.allocate(problem, scores)),
                     ("mask", lambda: mask.build(problem, scores, budget)), ("plan", lambda: attn.plan(q, k)),
                     ("problem", lambda: attn.problem(q, k)), ("block_bounds", lambda: problem.block_bounds())]:
        print(f"{name:12s} wall {wall(fn):.3f} ms  enqueue {cpu_only(fn):.3f} ms  do_bench {triton.testing.do_bench(fn):.3f} ms")

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            attn.plan(q, k)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=45, max_name_column_width=60))


if 'plan' in sys.argv[1:]:
    profile_planning()

# fixed cost per program of the block-sparse kernel: rows keeping only c blocks
B, H, Hkv, D = 1, 32, 8, 128
for N in (32768, 131072):
    qq = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    kk = torch.randn(B, Hkv, N, D, device="cuda", dtype=torch.bfloat16)
    vv = torch.randn(B, Hkv, N, D, device="cuda", dtype=torch.bfloat16)
    nb = N // 128
    i = torch.arange(nb, device="cuda")
    for c in (1, 2, 8, 32):
        # the diagonal plus the c-1 blocks before it (a local window), ascending; padding slots repeat r
        start = (i - (c - 1)).clamp_min(0)
        idx = torch.minimum(start[:, None] + torch.arange(c, device="cuda")[None, :], i[:, None])
        cnt = torch.minimum(i + 1, torch.tensor(c, device="cuda"))
        counts = cnt.to(torch.int32)[None, None].expand(B, H, nb).contiguous()
        kvi = idx.to(torch.int32)[None, None].expand(B, H, nb, c).contiguous()
        for cname, cfg in (("two loops", None), ("one loop", {"one_loop": True})):
            fn = lambda: block_sparse_attention(qq, kk, vv, counts, kvi, block_q=128, block_k=128, causal=True,
                                                config=cfg)
            ms = triton.testing.do_bench(fn)
            progs = B * H * nb
            print(f"fixed-cost {cname:9s} N={N} blocks/row={c}: {ms:.3f} ms, "
                  f"{ms * 1e3 / (progs / 132):.2f} us per program-wave")
