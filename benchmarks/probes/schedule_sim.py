"""Probe (CPU, no GPU): list-scheduling simulation of the proxy-score kernel's unsplit grid, one (batch, group)
after another against the heaviest programs of every group first (``KernelConfig.across_groups``).

Program ``p`` of a group scores q-blocks ``2p, 2p+1`` (two q-blocks per program, 128-token blocks and tiles) and
walks ``2p + 2`` kv-tiles under causal attention. Programs start in grid order on the first free slot (``--slots``:
SMs x resident programs; 132 x 2 on an H100 / H200). Prints each order's makespan over the ideal
``max(total / slots, longest program)``.

    python benchmarks/probes/schedule_sim.py --groups 2 4 8 --n 8k 16k 32k 64k 128k
"""
from __future__ import annotations

import argparse
import heapq
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import parse_n  # noqa: E402


def makespan(work: list[int], slots: int) -> int:
    """Greedy list scheduling in the given order: each program goes to the slot that frees first."""
    free = [0] * slots
    end = 0
    for w in work:
        t = heapq.heappop(free) + w
        heapq.heappush(free, t)
        end = max(end, t)
    return end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--n", nargs="+", default=["8k", "16k", "32k", "64k", "128k"])
    ap.add_argument("--slots", type=int, default=264)
    args = ap.parse_args()
    print(f"{'G':>3s} {'N':>7s} {'programs':>9s} {'one group after another':>24s} {'across groups':>14s}")
    for g in args.groups:
        for n in map(parse_n, args.n):
            tiles = [2 * p + 2 for p in range(max(1, n // 256))]  # heaviest first within a group
            grouped = [w for _ in range(g) for w in reversed(tiles)]
            across = [w for w in reversed(tiles) for _ in range(g)]
            ideal = max(sum(grouped) / args.slots, max(tiles))
            print(f"{g:3d} {n:7d} {len(grouped):9d} {makespan(grouped, args.slots) / ideal:24.3f} "
                  f"{makespan(across, args.slots) / ideal:14.3f}")


if __name__ == "__main__":
    main()
