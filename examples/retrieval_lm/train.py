"""Train the retrieval LM: a small transformers ``LlamaForCausalLM`` on seeded multi-key associative recall.

    python examples/retrieval_lm/train.py --out runs/main --minutes 7          # H100: the shipped recipe
    python examples/retrieval_lm/train.py --out runs/main --minutes 4 --resume # 4 more minutes from runs/main/ckpt
    python examples/retrieval_lm/train.py --tiny --out /tmp/rlm --steps 6      # CPU smoke test (< 60 s)

Writes ``OUT/model/`` (config.json, model.safetensors, generation_config.json: loadable with
``LlamaForCausalLM.from_pretrained``), ``OUT/ckpt/state.pt`` (model + AdamW + schedule state, for ``--resume``),
``OUT/train_log.json`` (arguments, architecture, curriculum, per-step log, validation accuracies, timings).

Schedule: progress ``p = step / --steps`` or ``p = elapsed / --minutes`` (wall-clock, the default on the GPU)
drives the curriculum (128-1K tokens, then 512-4K, then 1K-16K with half of the steps at 16K) and the learning rate
(linear warmup over the first 3%, cosine down to 10% of the peak). ``--resume`` continues from the checkpoint;
``--minutes M`` then means *M more minutes*: the schedule is stretched to ``elapsed + M`` (so a finished run's
LR comes back up to the cosine value at ``elapsed / (elapsed + M)``), and the curriculum stays in its last stage.
The loss is the cross-entropy of the answer tokens only (filler is unpredictable by construction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def _load_sibling(stem: str):
    """``examples/retrieval_lm/<stem>.py`` as module ``retrieval_lm_<stem>`` (a unique name: no clash with other
    modules called ``data``, and no sys.path entry needed)."""
    import importlib.util

    name = f"retrieval_lm_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{stem}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


D = _load_sibling("data")

#: validation prompts (model selection / early stop) use their own seeds; evaluate.py uses data.make_prompts'
#: default seeds, never seen during training or validation.
VAL_SEED_BASE = (1 << 40) + (1 << 36)


def model_config(tiny: bool = False, vocab: D.Vocab = D.Vocab(), **overrides):
    """The shipped architecture (or the tiny smoke-test one): Llama, GQA 8 query heads / 2 KV heads (4 per group),
    RoPE theta 1e6, no tied embeddings."""
    from transformers import LlamaConfig

    if tiny:  # CPU smoke test: 2 layers, 4 query heads on 1 KV head, head_dim 16
        dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=1, head_dim=16)
    else:
        dims = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=64)
    cfg = dict(vocab_size=vocab.size, max_position_embeddings=32768, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=False,
               bos_token_id=D.BOS, eos_token_id=D.EOS, pad_token_id=D.PAD, initializer_range=0.02, **dims)
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runs" / "main")
    p.add_argument("--model-dir", type=Path, default=None, help="where the final model goes (default OUT/model)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the training loop (the schedule "
                   "is time-based unless --steps is given; training stops before it either way)")
    p.add_argument("--steps", type=int, default=None, help="step-based schedule (reproducible; smoke tests)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt/state.pt if it exists")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of a saved model folder (fresh optimizer and schedule; e.g. to go on "
                        "training on a fresh machine, where OUT/ckpt is gone)")
    p.add_argument("--tiny", action="store_true", help="tiny model and short sequences (CPU smoke test)")
    p.add_argument("--config-override", type=str, default=None,
                   help='JSON dict of LlamaConfig overrides, e.g. \'{"num_hidden_layers": 2}\' (experiments only)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.03, help="warmup share of the schedule")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--tokens-per-step", type=int, default=None, help="default 131072 (tiny: 2048)")
    p.add_argument("--max-len", type=int, default=None, help="longest training length (default 16384; tiny 512)")
    p.add_argument("--stages", type=str, default=None,
                   help="curriculum 'start:min:max,...' e.g. '0:128:1024,0.2:512:4096,0.4:1024:16384'")
    p.add_argument("--n-queries", type=int, default=16)
    p.add_argument("--value-len", type=int, default=1)
    p.add_argument("--n-keys", type=int, default=32, help="key ids in the vocabulary (>= the pairs per sequence)")
    p.add_argument("--n-values", type=int, default=32, help="value ids in the vocabulary")
    p.add_argument("--n-filler", type=int, default=64, help="filler ids in the vocabulary")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="one-token needles SEP n(k, v) (data.py; n_keys x n_values more ids); --no-fused: SEP k v "
                        "pairs, which need a two-layer induction circuit")
    p.add_argument("--phrases", type=int, default=0,
                   help="filler drawn from a pool of this many random phrases per sequence, with a next-token loss on "
                        "it (dense training of induction heads; data.make_batch); 0: i.i.d. filler, answers only")
    p.add_argument("--phrase-len", type=int, default=8)
    p.add_argument("--filler-weight", type=float, default=1.0,
                   help="weight of the filler next-token loss (with --phrases only: i.i.d. filler is unpredictable)")
    p.add_argument("--echo", action=argparse.BooleanOptionalAction, default=False,
                   help="pairs written SEP k v k with the echoed key supervised (trains previous-token heads; "
                        "data.make_batch); --no-echo: SEP k v")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (less memory, ~30%% slower)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes; experimental)")
    p.add_argument("--ckpt-minutes", type=float, default=1.5, help="checkpoint (and model/) every this many minutes")
    p.add_argument("--val-minutes", type=float, default=1.0, help="validate every this many minutes")
    p.add_argument("--val-lengths", type=str, default=None, help="default 1024,4096,16384 (tiny: 256)")
    p.add_argument("--val-prompts", type=int, default=32)
    p.add_argument("--stop-at-acc", type=float, default=None,
                   help="stop early once validation accuracy >= this at every val length, twice in a row, in the "
                        "last curriculum stage")
    p.add_argument("--final-eval-prompts", type=int, default=64, help="dense check at the end (0: skip)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--device", type=str, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def _stages(spec: str) -> list[D.Stage]:
    out = []
    for part in spec.split(","):
        a, b, c = part.split(":")
        out.append(D.Stage(float(a), int(b), int(c)))
    return out


def make_curriculum(args: argparse.Namespace) -> D.Curriculum:
    if args.stages:
        stages = _stages(args.stages)
    elif args.tiny:
        stages = [D.Stage(0.0, 128, 256), D.Stage(0.5, 256, args.max_len or 512)]
    else:
        top = args.max_len or 16384
        stages = [D.Stage(0.0, 128, min(1024, top)), D.Stage(0.2, 512, min(4096, top)),
                  D.Stage(0.4, min(1024, top), top)]
    tps = args.tokens_per_step or (2048 if args.tiny else 1 << 17)
    return D.Curriculum(stages=stages, tokens_per_step=tps, n_queries=args.n_queries, value_len=args.value_len,
                        echo=args.echo, phrases=args.phrases, phrase_len=args.phrase_len, fused=args.fused,
                        max_pairs=min(64, args.n_keys))


def vocab_from_args(args: argparse.Namespace) -> D.Vocab:
    return D.Vocab(args.n_keys, args.n_values, args.n_filler, fused=args.fused)


def lr_at(p: float, args: argparse.Namespace) -> float:
    if p < args.warmup:
        return args.lr * max(p / args.warmup, 0.01)
    q = min(1.0, (p - args.warmup) / max(1e-9, 1 - args.warmup))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * q)))


def answer_loss(model, batch: dict[str, torch.Tensor], device: torch.device, amp: bool, filler_weight: float = 1.0):
    """Cross-entropy and accuracy of the answer tokens, plus ``filler_weight`` x the next-token cross-entropy on
    the filler (``batch["filler_labels"]``, where it has targets); the LM head runs on target positions only."""
    labels = batch["labels"]
    flat = (labels.reshape(-1) != D.IGNORE).nonzero().squeeze(1)  # on the CPU: no device sync
    target = labels.reshape(-1)[flat].to(device, non_blocking=True)
    fl = batch.get("filler_labels")
    fflat = (fl.reshape(-1) != D.IGNORE).nonzero().squeeze(1) if fl is not None and filler_weight > 0 else None
    if fflat is not None and fflat.numel() == 0:
        fflat = None
    flat = flat.to(device, non_blocking=True)
    ids = batch["input_ids"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        h = model.model(input_ids=ids, use_cache=False).last_hidden_state
        h = h.reshape(-1, h.shape[-1])
        logits = model.lm_head(h[flat]).float()
        if fflat is not None:
            ftarget = fl.reshape(-1)[fflat].to(device, non_blocking=True)
            flogits = model.lm_head(h[fflat.to(device, non_blocking=True)]).float()
    loss = torch.nn.functional.cross_entropy(logits, target)
    if fflat is not None:
        loss = loss + filler_weight * torch.nn.functional.cross_entropy(flogits, ftarget)
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


@torch.no_grad()
def answer_accuracy(model, prompts: dict[str, torch.Tensor], device: torch.device, amp: bool,
                    batch_tokens: int = 1 << 17) -> float:
    """Greedy next-token exact match at the end of each prompt (value_len 1: one forward; else greedy loop)."""
    ids, ans = prompts["input_ids"], prompts["answers"]
    n, L = ids.shape
    bs = max(1, batch_tokens // L)
    correct = 0
    for i in range(0, n, bs):
        x = ids[i:i + bs].to(device)
        a = ans[i:i + bs].to(device)
        out = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for _ in range(a.shape[1]):  # no cache: value_len is tiny
                h = model.model(input_ids=x, use_cache=False).last_hidden_state[:, -1]
                nxt = model.lm_head(h).argmax(-1)
                out.append(nxt)
                x = torch.cat([x, nxt[:, None]], 1)
        pred = torch.stack(out, 1)
        correct += int((pred == a).all(1).sum())
    return correct / n


TRAIN_SDPA = "retrieval_lm_sdpa_repeat_kv"


def _sdpa_repeat_kv(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Training fallback: KV heads repeated, plain causal SDPA (no mask, no padding), so that the flash backend
    runs even where SDPA's ``enable_gqa`` would not."""
    n = query.shape[1] // key.shape[1]
    if n > 1:
        key, value = key.repeat_interleave(n, 1), value.repeat_interleave(n, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1,
                                                           dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def preflight(model, cur: D.Curriculum, device: torch.device, amp: bool, vocab: D.Vocab) -> tuple[dict, object]:
    """One forward/backward of the largest step (no optimizer step) with SDPA's math backend disabled: a 16K
    causal attention through the math backend would materialise B x H x N x N scores. Tries transformers' SDPA
    (GQA through ``enable_gqa``), then repeated KV heads; returns what runs and a context manager for the steps."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRAIN_SDPA, _sdpa_repeat_kv)
    AttentionMaskInterface.register(TRAIN_SDPA, sdpa_mask)
    L = max(s.max_len for s in cur.stages)
    B = max(1, cur.tokens_per_step // L)
    q = cur.n_queries
    batch = D.make_batch(B, L, D.max_pairs(L, q, cur.value_len, cur.max_pairs, cur.echo, cur.fused), q,
                         seed=(1 << 31) - 1,
                         value_len=cur.value_len, vocab=vocab, echo=cur.echo,
                         phrases=cur.phrases, phrase_len=cur.phrase_len)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    info: dict = {"shape": [B, L], "tried": []}
    for impl in ("sdpa", TRAIN_SDPA):
        model.set_attn_implementation(impl)
        try:
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with sdpa_kernel(backends):
                loss, _ = answer_loss(model, batch, device, amp)
                loss.backward()
            torch.cuda.synchronize(device)
            info.update(attn_implementation=impl, seconds=time.perf_counter() - t0,
                        peak_gib=torch.cuda.max_memory_allocated(device) / 2**30)
            model.zero_grad(set_to_none=True)
            print(f"preflight: {impl} without the math backend, step {B}x{L} in {info['seconds']:.2f}s "
                  f"(incl. warm-up), peak {info['peak_gib']:.1f} GiB", flush=True)
            return info, lambda: sdpa_kernel(backends)
        except RuntimeError as exc:
            info["tried"].append(f"{impl}: {str(exc).splitlines()[0][:200]}")
            print(f"preflight: {impl} failed: {str(exc).splitlines()[0][:200]}", flush=True)
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    model.set_attn_implementation("sdpa")
    info["attn_implementation"] = "sdpa (math backend allowed)"
    print("preflight: WARNING no fused SDPA backend ran; training with the default dispatch", flush=True)
    return info, contextlib.nullcontext


def save_model(model, path: Path, meta: dict) -> None:
    from transformers import GenerationConfig

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    GenerationConfig(bos_token_id=D.BOS, eos_token_id=D.EOS, pad_token_id=D.PAD, do_sample=False,
                     max_new_tokens=1).save_pretrained(path)
    (path / "retrieval_lm.json").write_text(json.dumps(meta, indent=1))


def versions(device: torch.device) -> dict:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device": str(device), "host": platform.node(), "date": datetime.now(timezone.utc).isoformat()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.minutes is None and args.steps is None:
        raise SystemExit("give --minutes (time-based schedule) and/or --steps (step-based schedule)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt" / "state.pt"
    model_dir = args.model_dir or (out / "model")
    vocab = vocab_from_args(args)
    cur = make_curriculum(args)
    val_lengths = [int(x) for x in (args.val_lengths or ("256" if args.tiny else "1024,4096,16384")).split(",")]

    torch.manual_seed(args.seed)
    cfg = model_config(args.tiny, vocab, **(json.loads(args.config_override) if args.config_override else {}))
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
                            fused=device.type == "cuda")
    step, elapsed_before, log, vals, stage_starts, runs = 0, 0.0, [], [], {}, []
    budget_s = args.minutes * 60 if args.minutes is not None else None
    total_steps = args.steps
    if args.resume and ckpt_path.exists():
        st = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed_before = st["step"], st["elapsed"]
        log, vals, stage_starts, runs = st["log"], st["vals"], st["stage_starts"], st["runs"]
        cur = D.Curriculum.from_dict(st["curriculum"])
        print(f"resumed from {ckpt_path}: step {step}, {elapsed_before / 60:.2f} min trained", flush=True)
        if args.steps is not None:
            total_steps = step + args.steps
    elif args.resume:
        print(f"--resume: no checkpoint at {ckpt_path}, starting fresh", flush=True)
    if args.init_from is not None and not (args.resume and ckpt_path.exists()):
        from safetensors.torch import load_file

        sd = load_file(str(args.init_from / "model.safetensors"), device=str(device))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]:
            raise SystemExit(f"--init-from {args.init_from}: missing {missing}, unexpected {unexpected}")
        prev = args.init_from / "retrieval_lm.json"
        if prev.exists():
            runs.append({"init_from": str(args.init_from), "previous": json.loads(prev.read_text())})
        print(f"initialised from {args.init_from}", flush=True)
    total_budget = (elapsed_before + budget_s) if budget_s is not None else None
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    if args.compile:
        model.model.forward = torch.compile(model.model.forward, dynamic=True)  # state_dict keys unchanged
    model.train()
    import contextlib

    attn_ctx = contextlib.nullcontext
    pre: dict = {}
    if device.type == "cuda":
        pre, attn_ctx = preflight(model, cur, device, amp, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters ({n_params * 4 / 2**20:.1f} MiB fp32), device {device}, "
          f"schedule: {'steps ' + str(total_steps) if total_steps else ''} "
          f"{'minutes %.2f' % (total_budget / 60) if total_budget else ''}", flush=True)

    val_prompts = {L: D.make_prompts(args.val_prompts, L, seed=VAL_SEED_BASE + L, value_len=args.value_len,
                                     echo=cur.echo, phrases=cur.phrases, phrase_len=cur.phrase_len, vocab=vocab)
                   for L in val_lengths}
    run_info = {"started_step": step, "versions": versions(device), "preflight": pre,
                "argv": sys.argv[1:] if argv is None else argv}
    runs.append(run_info)

    def progress(now_elapsed: float) -> float:
        ps = []
        if total_steps:
            ps.append(step / total_steps)
        if total_budget:
            ps.append(now_elapsed / total_budget)
        return min(ps)

    def checkpoint(elapsed: float) -> None:
        meta = {"step": step, "trained_minutes": elapsed / 60, "vocab": vocab.to_dict(), "curriculum": cur.to_dict(),
                "value_len": args.value_len, "echo": cur.echo,
                "phrases": cur.phrases, "phrase_len": cur.phrase_len, "seed": args.seed, "runs": runs}
        save_model(model, model_dir, meta)
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "log": log, "vals": vals, "stage_starts": stage_starts, "runs": runs,
                    "curriculum": cur.to_dict(), "args": {k: str(v) for k, v in vars(args).items()}}, tmp)
        os.replace(tmp, ckpt_path)

    def validate(elapsed: float) -> dict:
        model.eval()
        with attn_ctx():
            accs = {str(L): answer_accuracy(model, P, device, amp) for L, P in val_prompts.items()}
        model.train()
        rec = {"step": step, "minutes": elapsed / 60, "acc": accs}
        vals.append(rec)
        print(f"  val step {step}: " + " ".join(f"{L}:{a:.3f}" for L, a in accs.items()), flush=True)
        return rec

    t0 = time.perf_counter()
    last_ckpt = last_val = t0
    tokens = 0
    good_vals = 0
    stop_reason = "schedule done"
    sum_loss = torch.zeros((), device=device)
    sum_acc = torch.zeros((), device=device)
    n_acc = 0
    t_log = time.perf_counter()
    tok_log = 0
    while True:
        now = time.perf_counter()
        elapsed = elapsed_before + (now - t0)
        if total_steps is not None and step >= total_steps:
            break
        if total_budget is not None and elapsed >= total_budget:
            stop_reason = "time budget"
            break
        p = progress(elapsed)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        shape = cur.draw(p, g)
        stage_starts.setdefault(str(shape["stage"]), step)
        batch = D.make_batch(shape["batch"], shape["length"], shape["n_pairs"], shape["n_queries"],
                             seed=args.seed * 1_000_003 + step + (1 << 30), value_len=args.value_len, vocab=vocab,
                             echo=cur.echo, phrases=cur.phrases, phrase_len=cur.phrase_len)
        lr = lr_at(p, args)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        with attn_ctx():
            loss, acc = answer_loss(model, batch, device, amp, args.filler_weight if cur.phrases else 0.0)
            loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        n_tok = shape["batch"] * shape["length"]
        tokens += n_tok
        tok_log += n_tok
        sum_loss += loss.detach()
        sum_acc += acc.detach()
        n_acc += 1
        if step % args.log_every == 0 or step == 1 or (total_steps is not None and step >= total_steps):
            dt = time.perf_counter() - t_log
            rec = {"step": step, "minutes": (elapsed_before + time.perf_counter() - t0) / 60, "p": round(p, 4),
                   "lr": lr, "loss": float(sum_loss / n_acc), "acc": float(sum_acc / n_acc),
                   "grad_norm": float(gnorm), "length": shape["length"], "batch": shape["batch"],
                   "n_pairs": shape["n_pairs"], "stage": shape["stage"], "tokens_per_s": tok_log / max(dt, 1e-9)}
            log.append(rec)
            print(f"step {step:6d} p {p:.3f} stage {shape['stage']} len {shape['length']:5d}x{shape['batch']:<4d} "
                  f"lr {lr:.2e} loss {rec['loss']:.4f} acc {rec['acc']:.3f} {rec['tokens_per_s'] / 1e3:.1f}K tok/s",
                  flush=True)
            sum_loss.zero_(), sum_acc.zero_()
            n_acc, tok_log, t_log = 0, 0, time.perf_counter()
        now = time.perf_counter()
        if now - last_val >= args.val_minutes * 60:
            rec = validate(elapsed_before + now - t0)
            last_val = time.perf_counter()
            last_stage = cur.stage(p) == len(cur.stages) - 1
            if args.stop_at_acc is not None and last_stage and min(rec["acc"].values()) >= args.stop_at_acc:
                good_vals += 1
                if good_vals >= 2:
                    stop_reason = f"validation accuracy >= {args.stop_at_acc} twice"
                    break
            else:
                good_vals = 0
        if now - last_ckpt >= args.ckpt_minutes * 60:
            checkpoint(elapsed_before + now - t0)
            last_ckpt = time.perf_counter()

    elapsed = elapsed_before + (time.perf_counter() - t0)
    train_s = time.perf_counter() - t0
    final_val = validate(elapsed)
    checkpoint(elapsed)
    model.eval()
    final = {}
    if args.final_eval_prompts:
        for L in val_lengths:
            P = D.make_prompts(args.final_eval_prompts, L, value_len=args.value_len, echo=cur.echo,
                              phrases=cur.phrases, phrase_len=cur.phrase_len, vocab=vocab)  # evaluate.py's seeds
            with attn_ctx():
                final[str(L)] = answer_accuracy(model, P, device, amp)
        print("final dense accuracy (held-out prompts): " + " ".join(f"{L}:{a:.3f}" for L, a in final.items()),
              flush=True)
    run_info.update(ended_step=step, train_seconds=train_s, tokens=tokens, stop_reason=stop_reason,
                    tokens_per_s=tokens / max(train_s, 1e-9))
    result = {
        "model_dir": str(model_dir), "steps": step, "trained_minutes": elapsed / 60, "stop_reason": stop_reason,
        "parameters": n_params, "config": cfg.to_dict(), "vocab": vocab.to_dict(), "curriculum": cur.to_dict(),
        "stage_starts": stage_starts, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
        "final_validation": final_val, "final_dense_accuracy": final, "validation": vals, "log": log,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (out / "train_log.json").write_text(json.dumps(result, indent=1, default=str))
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    print(f"saved {model_dir} ({size / 2**20:.1f} MiB safetensors), {step} steps, {elapsed / 60:.2f} min, "
          f"stop: {stop_reason}; log {out / 'train_log.json'}", flush=True)
    return result


if __name__ == "__main__":
    main()
