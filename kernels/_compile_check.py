"""Compile every Triton launch of sparsekit for a CUDA architecture, on a machine without a GPU.

The interpreter tests run the kernels' code but never compile it: a kernel that the interpreter runs can still
fail to compile for a GPU (Python lists in ``@triton.jit`` code, a type the compiler rejects) or compile into a
kernel that spills registers. This check catches both without a GPU, in two processes:

1. ``record`` (under ``TRITON_INTERPRET=1``): runs sparsekit's ops on CPU tensors with every launch intercepted
   at ``_launch.Launch``. Each launch is kept as the kernel, Triton's own specialisation of its arguments
   (``native_specialize_impl``: pointer and int divisibility, ints equal to 1 as constants, tensor descriptors),
   its constexprs, warps and stages. The planning stages run for real at a small size (the pipeline reads their
   outputs); the heavy kernels are recorded at model sizes without running (``--sizes``).
2. ``compile`` (without the interpreter): compiles each recorded launch with Triton for ``--arch`` (sm_90 by
   default: H100 / H200) and reads registers and spills from the ``ptxas`` Triton compiles with.

    python -m sparsekit.kernels._compile_check                  # both steps, a table, exit 1 on a compile error
    python -m sparsekit.kernels._compile_check --json out.json --sass sass/

Rules that read the device (tile sizes, TMA, across-groups order) see a CPU here, so the recorded constexprs
are the CPU-side choices plus the variants named in the scenarios; interpreter-only constexprs (``UPCAST_DOT``:
the interpreter's bf16 dot emulation) are compiled as the GPU runs them. Compile-only: nothing here times a
kernel or checks its results on a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: constexprs only the interpreter sets True; a GPU launch always passes False
INTERPRETER_ONLY = {"UPCAST_DOT": False}

SHAPES = {"llama-3.1-8b": (32, 8, 1, 128), "qwen2.5-7b": (28, 4, 4, 128)}  # Hq, Hkv, proxy groups, head dim


def _n(text: str) -> int:
    return int(text[:-1]) * 1024 if text.lower().endswith("k") else int(text)


# ----------------------------------------------------------------------------------------------- record step
def _record(args: argparse.Namespace) -> list[dict]:
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    from . import _launch

    launches: list[dict] = []
    state = {"label": "", "run": True}
    original_call = _launch.Launch.__call__

    def recorder(self, grid, call_args):
        py = getattr(self.fn, "fn", self.fn)
        spec = [native_specialize_impl(CUDABackend, a, False, True, True) for a in call_args]
        launches.append({"label": state["label"], "module": py.__module__, "name": py.__name__,
                         "grid": [int(g) for g in grid], "args": [[t, k] for t, k in spec],
                         "values": [a if type(a) in (int, bool) else None for a in call_args],
                         "constexprs": dict(self.constexprs),
                         "num_warps": self.num_warps, "num_stages": self.num_stages})
        if state["run"]:
            original_call(self, grid, call_args)

    _launch.Launch.__call__ = recorder
    try:
        for label, run, fn in _scenarios(args, torch):
            state["label"], state["run"] = label, run
            fn()
    finally:
        _launch.Launch.__call__ = original_call
    return launches


def _scenarios(args: argparse.Namespace, torch: Any):
    """(label, run the launches?, callable) for every kernel and the variants its rules pick."""
    import sparsekit
    from sparsekit.kernels.block_sparse import block_sparse_attention
    from sparsekit.kernels.last_block_mass import last_block_mass
    from sparsekit.kernels.proxy_scores import proxy_scores
    from sparsekit.kernels.topk_compact import topk_compact
    from sparsekit.kernels.topk_rank import topk_rank

    gen = torch.Generator().manual_seed(0)
    bf16 = torch.bfloat16

    def plan_and_attend(dtype, hq, hkv, g):
        # the whole GPU path at a small size, run for real: estimator, budget, mask (rank sort), attention
        q = torch.randn(1, hq, 1000, 64, generator=gen).to(dtype)
        k = torch.randn(1, hkv, 1000, 64, generator=gen).to(dtype)
        v = torch.randn(1, hkv, 1000, 64, generator=gen).to(dtype)
        attn = sparsekit.build(estimator={"name": "proxy", "g": g, "impl": "triton"},
                               budget={"name": "dynamic", "gamma": 0.9, "impl": "triton"},
                               mask={"name": "topk", "impl": "triton"}, kernel="triton", block_q=64, block_k=64)
        attn(q, k, v)

    yield "pipeline bf16 GQA 8/2 G=1", True, lambda: plan_and_attend(bf16, 8, 2, 1)
    yield "pipeline fp16 GQA 28/4 G=4", True, lambda: plan_and_attend(torch.float16, 28, 4, 4)

    for shape in args.shapes:
        hq, hkv, groups, d = SHAPES[shape]
        for n in map(_n, args.sizes):
            q = torch.empty(1, hq, n, d, dtype=bf16)
            k = torch.empty(1, hkv, n, d, dtype=bf16)
            tag = f"{shape} {n // 1024}K"
            yield f"{tag} proxy_scores", False, lambda q=q, k=k, g=groups: proxy_scores(
                q, k, groups=g, stride=4, block_q=128, block_k=128, causal=True)
            yield f"{tag} last_block_mass", False, lambda q=q, k=k: last_block_mass(
                q, k, block_q=128, block_k=128, causal=True)
            n_b = -(-n // 128)
            counts = torch.full((1, hq, n_b), min(n_b, 64), dtype=torch.int32)
            indices = torch.zeros(1, hq, n_b, 64, dtype=torch.int32)
            for cfg in (None, {"use_tma": True, "tma_descriptor": "host"}, {"use_tma": True, "tma_descriptor": "device"}):
                name = "default" if cfg is None else f"tma {cfg['tma_descriptor']}"
                yield f"{tag} block_sparse {name}", False, lambda q=q, k=k, c=counts, i=indices, cfg=cfg: (
                    block_sparse_attention(q, k, k, c, i, block_q=128, block_k=128, causal=True, config=cfg))
    # the mask's kernels at a model size: rank sorts of every width (narrow 0, 1, 2) and the compact path
    n_b = 1024
    scores = torch.empty(1, 4, n_b, n_b, dtype=torch.float32)
    first = torch.zeros(1, n_b, dtype=torch.int32)
    last = torch.arange(n_b, dtype=torch.int32)[None]
    visible = last + 1
    for narrow in (0, 1, 2):
        yield f"topk_rank {n_b} blocks narrow={narrow}", False, lambda nr=narrow: topk_rank(
            scores, first, last, visible, True, True, narrow=nr)
    asc = torch.zeros(1, 4, 256, 2048, dtype=torch.int32)
    yield "topk_compact 2048 blocks", False, lambda: topk_compact(
        asc, torch.zeros_like(asc), torch.ones(1, 28, 256, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------- compile step
def _compile(records: list[dict], arch: int, sass_dir: str | None) -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend, get_ptxas
    from triton.compiler import ASTSource

    ptxas = get_ptxas(arch).path
    rows = []
    for rec in records:
        fn = getattr(importlib.import_module(rec["module"]), rec["name"])
        constexprs = {**rec["constexprs"], **{k: v for k, v in INTERPRETER_ONLY.items() if k in rec["constexprs"]}}
        signature: dict[str, str] = {}
        constants: dict[Any, Any] = {}
        attrs: dict[tuple, Any] = {}
        for idx, (name, (ty, key), value) in enumerate(zip(fn.arg_names, rec["args"], rec["values"])):
            signature[name] = ty
            if ty == "constexpr":
                constants[(idx,)] = value
            elif isinstance(key, str):
                attrs[(idx,)] = CUDABackend.parse_attr(key)
        for name, value in constexprs.items():
            signature[name] = "constexpr"
            constants[(fn.arg_names.index(name),)] = value
        opts = {"num_warps": rec["num_warps"]}
        if rec["num_stages"] is not None:
            opts["num_stages"] = rec["num_stages"]
        row = {"label": rec["label"], "kernel": rec["name"], "grid": rec["grid"], **opts,
               "constexprs": rec["constexprs"]}
        try:
            compiled = triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                                      options=opts)
        except Exception as exc:  # noqa: BLE001 - reported per launch; the check goes on with the next one
            row["error"] = f"{type(exc).__name__}: {exc}".strip()
            rows.append(row)
            continue
        row["shared_bytes"] = compiled.metadata.shared
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp, "kernel.ptx")
            ptx.write_text(compiled.asm["ptx"])
            info = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", str(ptx),
                                   "-o", str(Path(tmp, "kernel.o"))], capture_output=True, text=True).stderr
        regs = re.search(r"Used (\d+) registers", info)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
        row["registers"] = int(regs.group(1)) if regs else None
        row["spill_bytes"] = int(spills.group(1)) + int(spills.group(2)) if spills else None
        if sass_dir:
            stem = re.sub(r"[^A-Za-z0-9]+", "_", f"{rec['label']}_{rec['name']}")
            Path(sass_dir).mkdir(parents=True, exist_ok=True)
            cubin = Path(sass_dir, stem + ".cubin")
            cubin.write_bytes(compiled.asm["cubin"])
            sass = subprocess.run([str(Path(ptxas).with_name("nvdisasm")), "-c", str(cubin)], capture_output=True,
                                  text=True).stdout
            Path(sass_dir, stem + ".sass").write_text(sass)
        rows.append(row)
    return rows


def _distinct(records: list[dict]) -> list[dict]:
    """One record per compiled variant (kernel, signature, constants, warps, stages)."""
    seen, out = set(), []
    for rec in records:
        key = json.dumps([rec["module"], rec["name"], rec["args"],
                          [v for (t, _), v in zip(rec["args"], rec["values"]) if t == "constexpr"],
                          rec["constexprs"], rec["num_warps"], rec["num_stages"]], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsekit.kernels._compile_check", description=__doc__.splitlines()[0])
    p.add_argument("--step", choices=["record", "compile", "both"], default="both")
    p.add_argument("--launches", default=os.path.join(tempfile.gettempdir(), "sparsekit_launches.json"),
                   help="the recorded launches (written by record, read by compile)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--sizes", nargs="+", default=["32k", "128k"], help="sequence lengths of the recorded launches")
    p.add_argument("--arch", default="sm_90", help="CUDA architecture, e.g. sm_90 (H100/H200), sm_80 (A100)")
    p.add_argument("--json", help="write the compile report here")
    p.add_argument("--sass", help="write each kernel's cubin and SASS into this folder")
    args = p.parse_args(argv)

    if args.step == "record":
        if not os.environ.get("TRITON_INTERPRET"):
            p.error("the record step runs under TRITON_INTERPRET=1 (use --step both to get it set)")
        records = _record(args)
        Path(args.launches).write_text(json.dumps(records, default=str))
        print(f"recorded {len(records)} launches -> {args.launches}")
        return 0
    if os.environ.get("TRITON_INTERPRET"):  # before the record step: it would run for nothing
        p.error("the compile step runs without TRITON_INTERPRET (unset it)")
    if args.step == "both":
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        subprocess.run([sys.executable, "-m", __spec__.name, "--step", "record", "--launches", args.launches,
                        "--shapes", *args.shapes, "--sizes", *args.sizes], check=True, env=env)
    rows = _compile(_distinct(json.loads(Path(args.launches).read_text())), int(args.arch.removeprefix("sm_")),
                    args.sass)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sparsekit's Triton launches compiled for {args.arch}")
    for col in ("launch", "kernel", "warps", "stages", "regs", "spill B", "smem B", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["label"], r["kernel"], str(r["num_warps"]), str(r.get("num_stages", "-")),
                      str(r.get("registers", "")), str(r.get("spill_bytes", "")), str(r.get("shared_bytes", "")),
                      r.get("error", "")[:200])
    Console(width=160).print(table)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
