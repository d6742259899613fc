"""The ``sparsekit`` command: ``list``, ``demo``, ``info``, ``ablate``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsekit", description="Block-sparse attention for long-context prefill.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="every stage, its plugin, options and whether it can run here")
    p_list.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("info", help="same as `list`")
    p_demo = sub.add_parser("demo", help="ProxyAttn on a built-in synthetic long-context workload vs dense")
    p_demo.add_argument("--n", type=int, default=None, help="tokens (default 16384 on CPU, 32768 on GPU)")
    p_demo.add_argument("--preset", default="proxyattn")
    p_demo.add_argument("--heads", type=int, default=None)
    p_demo.add_argument("--kv-heads", type=int, default=None)
    p_demo.add_argument("--device", default=None)
    p_demo.add_argument("--kernel", default=None, help="override the preset's kernel (default: auto)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--json", action="store_true")
    p_abl = sub.add_parser("ablate", help="a grid of strategies x parameters x workloads x lengths vs dense (TOML config)")
    p_abl.add_argument("config", help="ablation TOML file (see docs/ablation.md and examples/ablations/)")
    p_abl.add_argument("--out", default=None, help="output folder (default: the config's `out`, else runs/<config name>)")
    p_abl.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:1, ...)")
    p_abl.add_argument("--dtype", default=None, help="override the config's dtype (float32, bfloat16, float16)")
    p_abl.add_argument("--no-plots", action="store_true", help="skip the plots")
    args = parser.parse_args(argv)

    from .errors import SparsekitError

    try:
        if args.command in ("list", "info"):
            from .info import print_report, report

            if getattr(args, "json", False):
                print(json.dumps(report(), indent=2, default=str))
            else:
                print_report()
        elif args.command == "demo":
            from .demo import print_demo, run_demo

            result = run_demo(args.n, preset=args.preset, heads=args.heads, kv_heads=args.kv_heads,
                              device=args.device, kernel=args.kernel, seed=args.seed)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print_demo(result)
        elif args.command == "ablate":
            from .ablate import run

            run(args.config, out=args.out, device=args.device, dtype=args.dtype, plots=not args.no_plots)
    except SparsekitError as exc:
        print(f"sparsekit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
