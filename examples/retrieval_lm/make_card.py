"""Fill MODEL_CARD.template.md from train_log.json and eval.json into the model folder's README.md.

    python examples/retrieval_lm/make_card.py --train-log train_log.json --eval eval.json \
        --out examples/retrieval_lm/model/README.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _dense_table(ev: dict[str, Any]) -> str:
    rows = ["| length | accuracy | correct / n | accuracy by needle depth (0-0.2, ..., 0.8-1) |",
            "| --- | --- | --- | --- |"]
    for L, r in ev.get("dense", {}).items():
        depth = " / ".join("-" if b["accuracy"] is None else f"{b['accuracy']:.2f}" for b in r["by_depth"])
        rows.append(f"| {L} | {r['accuracy']:.3f} | {r['correct']} / {r['n']} | {depth} |")
    return "\n".join(rows)


def _sparse_table(ev: dict[str, Any]) -> str:
    lengths = [str(x) for x in ev["settings"]["sparse_lengths"]]
    rows = ["| strategy (budget) | " + " | ".join(f"{L}: acc / density" for L in lengths) + " |",
            "| --- |" + " --- |" * len(lengths)]
    dense = ev.get("dense_on_sparse_prompts", {})
    rows.append("| dense (SDPA) | " + " | ".join(f"{dense[L]:.3f} / 1.00" if L in dense else "-" for L in lengths)
                + " |")
    for e in ev.get("sparse", []):
        cells = []
        for L in lengths:
            c = e.get("results", {}).get(L)
            if e.get("error"):
                cells.append("error")
            elif c is None or c.get("skipped"):
                cells.append("not run")
            elif "error" in c:
                cells.append("error")
            else:
                d = c.get("density")
                cells.append(f"{c['accuracy']:.3f} / {d:.3f}" if d is not None else f"{c['accuracy']:.3f} / -")
        rows.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _analysis_table(an: dict[str, Any] | None) -> str:
    if not an or "layers" not in an:
        return "(not run)" if not an else f"(error: {an.get('error')})"
    rows = ["| layer | within group JS / cos / Jaccard | across groups JS / cos / Jaccard "
            "| oracle density@0.95 per head "
            "| density spread in group (max - min) | needle mass per head |", "| --- | --- | --- | --- | --- | --- |"]

    def f(d: dict[str, Any]) -> str:
        return "-" if d["js_bits"] is None else f"{d['js_bits']:.3f} / {d['cosine']:.3f} / {d['jaccard90']:.2f}"

    for lay in an["layers"]:
        dens = " ".join(f"{x:.2f}" for x in lay["oracle_density_per_head"]["0.95"])
        spread = " ".join(f"{g['oracle_density_spread']['0.95']:.2f}" for g in lay["groups"])
        needle = " ".join(f"{x:.2f}" for x in lay["answer_row_needle_mass_per_head"])
        rows.append(f"| {lay['layer']} | {f(lay['within_group'])} | {f(lay['across_groups'])} | {dens} | {spread} | "
                    f"{needle} |")
    return "\n".join(rows)


def fill(train_log: dict[str, Any], ev: dict[str, Any]) -> str:
    cfg = ev["model"]["config"]
    cur = train_log.get("curriculum", {})
    args = train_log.get("args", {})
    runs = train_log.get("runs", [])
    v0 = (runs[0].get("versions") if runs else None) or {}
    env = ev.get("environment", {})
    rope = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    tokens = sum(r.get("tokens", 0) for r in runs)
    secs = sum(r.get("train_seconds", 0) for r in runs)
    stages = cur.get("stages", [])
    curriculum = ", ".join(f"from {s['start']:.0%}: {s['min_len']}-{s['max_len']} tokens" for s in stages)
    if cur:
        curriculum += f" (last stage: {cur.get('long_fraction', 0.5):.0%} of steps at the max length)"
    an = ev.get("analysis") or {}
    voc = train_log.get("vocab", {})
    fused = bool(voc.get("fused", cur.get("fused", False)))
    nk, nv, nf = voc.get("n_keys", 256), voc.get("n_values", 256), voc.get("n_filler", 496)
    vocab_desc = f"16 specials (0 PAD, 1 BOS, 2 SEP, 3 QUERY, 4 EOS), {nk} keys, {nv} values, {nf} filler"
    if fused:
        vocab_desc += f", {nk * nv} fused needles (one per key-value combination, from id {voc.get('needle0', '?')})"
    filler = ("repeated random phrases (a pool per sequence, with a next-token loss on them)" if cur.get("phrases")
              else "uniformly random filler tokens")
    if fused:
        recipe = (f"`BOS`, a haystack of {filler} with `P` one-token needles `SEP n(key, value)` at random "
                  "non-overlapping depths (keys distinct within a sequence; the needle id encodes both the key and the "
                  "value), then queries `QUERY key value`: answering means matching the query key against every "
                  "needle in the context and reading the value off the match, a one-hop retrieval of a single "
                  "far-back position.")
    else:
        recipe = (f"`BOS`, a haystack of {filler} with `P` pairs `SEP key value` at random non-overlapping depths "
                  "(keys distinct within a sequence), then queries `QUERY key value` (an induction circuit: "
                  "previous-token head + key match).")
    recipe += " The loss is the cross-entropy of the value tokens of the queries" + (
        " plus the filler's next-token loss." if cur.get("phrases") else " only.")
    values = {
        "vocab_desc": vocab_desc, "data_recipe": recipe, "max_pairs": cur.get("max_pairs", 64),
        "pair_div": 2 * (2 if fused else 2 + int(cur.get("value_len", 1)) + int(bool(cur.get("echo")))),
        "transformers_version": cfg.get("transformers_version", env.get("transformers")),
        "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
        "q_heads": cfg["num_attention_heads"], "kv_heads": cfg["num_key_value_heads"],
        "group": cfg["num_attention_heads"] // cfg["num_key_value_heads"], "head_dim": cfg.get("head_dim"),
        "rope_theta": f"{rope:g}" if rope else "?", "max_pos": cfg.get("max_position_embeddings"),
        "vocab": cfg["vocab_size"], "params": f"{ev['model']['parameters'] / 1e6:.2f}M",
        "size_mb": f"{ev['model']['safetensors_bytes'] / 1e6:.1f}", "weights_dtype": train_log.get("config", cfg).get("dtype", "float32"),
        "n_queries": cur.get("n_queries", "?"), "eval_pairs": ev["settings"]["n_pairs"],
        "gpu": v0.get("gpu", v0.get("device", "?")), "torch_version": v0.get("torch", "?"),
        "lr": args.get("lr"), "warmup": args.get("warmup"), "min_lr_frac": args.get("min_lr_frac"),
        "wd": args.get("weight_decay"), "clip": args.get("clip"), "tokens_per_step": cur.get("tokens_per_step"),
        "curriculum": curriculum or "?", "steps": train_log.get("steps"),
        "minutes": f"{train_log.get('trained_minutes', 0):.2f}", "stop_reason": train_log.get("stop_reason"),
        "tokens": f"{tokens / 1e6:.0f}M", "tok_s": f"{tokens / max(secs, 1e-9) / 1e3:.0f}K",
        "seed": args.get("seed"),
        "command": " && ".join("python examples/retrieval_lm/train.py " + " ".join(r.get("argv", [])) for r in runs
                               if "argv" in r) or "?",
        "sparse_block": ev["settings"].get("block") or 128,
        "dense_prompts": ev["settings"]["prompts"], "sparse_prompts": ev["settings"]["sparse_prompts"],
        "dense_table": _dense_table(ev), "sparse_table": _sparse_table(ev),
        "analysis_length": an.get("length", "?"), "analysis_prompts": an.get("prompts", "?"),
        "analysis_block": an.get("block_q", "?"), "analysis_table": _analysis_table(ev.get("analysis")),
        "environment": ", ".join(f"{k} {v}" for k, v in env.items() if v is not None),
        "max_train_len": max((s["max_len"] for s in stages), default="?"),
    }
    return (HERE / "MODEL_CARD.template.md").read_text().format_map(values)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-log", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    text = fill(json.loads(a.train_log.read_text()), json.loads(a.eval.read_text()))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
