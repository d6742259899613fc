"""Accuracy against density for every strategy of an ``evaluate.py`` result, one panel per length.

    python examples/retrieval_lm/plot.py --eval examples/retrieval_lm/model/eval.json --out accuracy_density.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(ev: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [str(x) for x in ev["settings"]["sparse_lengths"]]
    presets = sorted({e["preset"] for e in ev["sparse"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.8), sharey=True, squeeze=False)
    for ax, L in zip(axes[0], lengths):
        for i, preset in enumerate(presets):
            pts = sorted((r["density"], r["accuracy"]) for e in ev["sparse"] if e["preset"] == preset
                         for r in [e.get("results", {}).get(L)] if r and r.get("density") is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=4, lw=1.2, label=preset, color=f"C{i}")
        dense = ev.get("dense_on_sparse_prompts", {}).get(L)
        if dense is not None:
            ax.axhline(dense, color="k", lw=0.8, ls="--", label="dense")
        ax.set_title(f"{int(L) // 1024}K tokens")
        ax.set_xlabel("density (kept / causal blocks)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact-match accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    gpu = ev.get("environment", {}).get("gpu", "")
    fig.suptitle(f"retrieval LM (issue 8): accuracy vs density, {ev['settings']['sparse_prompts']} prompts per point"
                 + (f", {gpu}" if gpu else ""), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    plot(json.loads(a.eval.read_text()), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
