"""Compare ProxyAttn planning with impl='torch' and impl='triton' on the GPU: layouts, recall and output error."""
import sys
import torch
import sparsekit
from sparsekit.workloads import SyntheticWorkload

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
q, k, v = SyntheticWorkload(n=n).generate(torch.bfloat16, "cuda")
g = q.shape[1] // k.shape[1]
rows = slice(n - 1024, n)
ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                                        is_causal=True)
for impl in ("torch", "triton"):
    for kernel in ("triton", "torch"):
        if kernel == "torch" and impl == "triton":
            continue
        attn = sparsekit.build("proxyattn", estimator={"impl": impl}, budget={"impl": impl}, kernel=kernel)
        out, plan = attn(q, k, v, return_plan=True)
        rec = sparsekit.attention_recall(q, k, plan.layout, rows=64)
        err = sparsekit.relative_error(out[:, :, rows], ref[:, :, rows])
        print(f"impl={impl} kernel={kernel} density={plan.density:.4f} recall={rec:.4f} rel_err_last1024={err:.4f} "
              f"max_k={plan.layout.max_k} ratio_mean={plan.budget.info['ratio'].mean().item():.3f}", flush=True)
        if impl == "torch" and kernel == "triton":
            torch_layout = plan.layout
    if impl == "triton":
        print("layouts equal:", torch.equal(torch_layout.kv_counts, plan.layout.kv_counts),
              torch_layout.max_k == plan.layout.max_k and torch.equal(torch_layout.kv_indices, plan.layout.kv_indices))
