"""RULER-style needle-in-a-haystack tasks for a transformers model, scored by exact match, dense against sparse.

>>> from sparsekit.tasks import make_task, evaluate, summarize
>>> tasks = [make_task(kind, tok, 32768, seed, depth=d) for kind in ("single", "multikey", "multivalue")
...          for d in (0.1, 0.5, 0.9) for seed in range(4)]
>>> dense = evaluate(model, tok, tasks)                                   # the model as it is (e.g. SDPA)
>>> sparse = evaluate(model, tok, tasks, strategy={"preset": "proxyattn", "budget": {"gamma": 0.9}})
>>> summarize(dense + sparse)          # accuracy and mean density per (strategy, kind, length)

Kinds (after RULER's ``niah_single``, ``niah_multikey``, ``niah_multivalue``):

* ``single``: one needle ``One of the special magic numbers for {key} is: {value}.``; asked for its value.
* ``multikey``: ``num_keys`` needles with different keys (the others are distractors); asked for one key's value.
* ``multivalue``: ``num_values`` needles with the same key and different values; asked for all of them.

The haystack is filler sentences (RULER's "noise" haystack by default, or your own text) repeated until the
prompt has as many tokens as possible without exceeding ``length``. Needles go between sentences at a relative
``depth`` of the haystack (0 = start, 1 = end). Keys are word pairs, values 7-digit numbers, all drawn from
``random.Random(f"{kind}:{seed}")``: the same seed gives the same needles at every length.

Scoring (RULER's ``string_match_all``, all or nothing): the output is correct when every expected value occurs in
the generated text as a whole token (not inside a longer number); ``score`` is the fraction of values found.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .errors import ConfigError, InputError

__all__ = ["KINDS", "Task", "evaluate", "greedy_generate", "is_correct", "make_task", "make_tasks", "score",
           "summarize"]

KINDS = ("single", "multikey", "multivalue")
_ALIASES = {"niah_single": "single", "niah_single_1": "single", "niah_multikey": "multikey",
            "niah_multikey_1": "multikey", "multi-key": "multikey", "multi_key": "multikey",
            "niah_multivalue": "multivalue", "multi-value": "multivalue", "multi_value": "multivalue"}

HEADER = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
          "I will quiz you about the numbers afterwards.\n")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
QUESTION_ALL = "What are all the special magic numbers for {key} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic number for {key} mentioned in the provided text is"
ANSWER_PREFIX_ALL = "The special magic numbers for {key} mentioned in the provided text are"

_ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "crimson", "curious", "damp", "eager", "faint",
               "fierce", "gentle", "gloomy", "golden", "hollow", "humble", "icy", "jolly", "lively", "lonely",
               "mellow", "misty", "noble", "odd", "pale", "proud", "quiet", "rapid", "rustic", "shiny", "silent",
               "sleepy", "sour", "steady", "swift", "tender", "tidy", "vast", "wild", "witty")
_NOUNS = ("anchor", "badger", "bridge", "candle", "canyon", "castle", "cloud", "comet", "desert", "dragon",
          "falcon", "forest", "garden", "glacier", "harbor", "island", "jungle", "kettle", "ladder", "lantern",
          "meadow", "mirror", "needle", "orchard", "otter", "palace", "parrot", "pebble", "pepper", "planet",
          "river", "rocket", "saddle", "spider", "statue", "thunder", "tunnel", "valley", "violin", "walrus")


@dataclass(frozen=True)
class Task:
    """One prompt and its expected answer.

    ``prompt_ids``: token ids of the whole prompt (header, haystack with needles, question, answer prefix), ready
    for ``generate``. ``answer_text``: the expected answer (values joined by ``", "``); ``answers``: each value.
    ``needle_positions``: token index where each needle sentence starts (the asked needle first); ``depths``: each
    needle's actual relative depth in the haystack's tokens; ``depth``: what was requested (None: random).
    ``context_span``: token range ``[start, end)`` of the haystack.
    """

    prompt_ids: list[int]
    answer_text: str
    kind: str = "single"
    answers: tuple[str, ...] = ()
    key: str = ""
    length: int = 0
    seed: int = 0
    depth: float | tuple[float, ...] | None = None
    depths: tuple[float, ...] = ()
    needle_positions: tuple[int, ...] = ()
    needles: tuple[str, ...] = ()
    context_span: tuple[int, int] = (0, 0)
    prompt: str = field(default="", repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def name(self) -> str:
        d = "rand" if self.depth is None else (f"{self.depth:.2f}" if isinstance(self.depth, float)
                                              else "-".join(f"{x:.2f}" for x in self.depth))
        return f"{self.kind}-len{self.length}-depth{d}-seed{self.seed}"

    def __post_init__(self) -> None:
        if not self.answers:
            object.__setattr__(self, "answers", tuple(a.strip() for a in self.answer_text.split(",") if a.strip()))


# ------------------------------------------------------------------------------------------------
# building tasks
# ------------------------------------------------------------------------------------------------
def _kind(kind: str) -> str:
    k = _ALIASES.get(kind, kind)
    if k not in KINDS:
        raise ConfigError(f"kind={kind!r} (allowed: {', '.join(KINDS)}, or RULER's niah_single/niah_multikey/"
                          "niah_multivalue). Fix: e.g. make_task('single', ...)")
    return k


def _sentences(haystack: str | Sequence[str] | None) -> list[str]:
    if haystack is None:
        text = NOISE
    elif isinstance(haystack, str):
        text = haystack
    else:
        return [s for s in haystack if s.strip()]
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]
    if not parts:
        raise InputError("haystack has no sentences (allowed: text or a list of sentences). Fix: pass some text")
    return parts


def _encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    enc = tokenizer(text, add_special_tokens=add_special_tokens)
    ids = enc["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def make_task(kind: str, tokenizer: Any, length: int, seed: int = 0, *, depth: float | Sequence[float] | None = 0.5,
              num_keys: int = 4, num_values: int = 4, haystack: str | Sequence[str] | None = None,
              chat_template: bool = False, add_special_tokens: bool = True) -> Task:
    """One task of ``kind`` (``single``, ``multikey``, ``multivalue``) whose prompt has at most ``length`` tokens
    (as many as the filler allows).

    ``depth``: relative depth of the asked needle in the haystack (``multivalue``: of the first value); the other
    needles go at seeded random depths. A sequence gives every needle's depth (the asked one first); ``None``
    draws all at random. ``num_keys``: needles of ``multikey``; ``num_values``: values of ``multivalue``.
    ``haystack``: filler text or sentences (default RULER's repeated noise sentences). ``chat_template``: wrap the
    instruction with the tokenizer's chat template (instruct models); the answer prefix follows the generation
    prompt. ``add_special_tokens``: e.g. BOS (ignored with ``chat_template``, which brings its own).
    """
    kind = _kind(kind)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise InputError(f"length={length!r} (allowed: an int >= 1, the prompt's token budget). Fix: e.g. 4096")
    rng = random.Random(f"{kind}:{seed}")
    n_needles = {"single": 1, "multikey": num_keys, "multivalue": num_values}[kind]
    if n_needles < 1:
        raise InputError(f"num_keys/num_values={n_needles} for kind={kind!r} (allowed: >= 1). Fix: e.g. 4")
    keys: list[str] = []
    while len(keys) < (n_needles if kind == "multikey" else 1):
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if key not in keys:
            keys.append(key)
    values: list[str] = []
    while len(values) < n_needles:
        val = str(rng.randint(1_000_000, 9_999_999))
        if val not in values:
            values.append(val)
    if kind == "multikey":
        pairs = list(zip(keys, values))
    else:
        pairs = [(keys[0], v) for v in values]
    asked_key = pairs[0][0]
    answers = (pairs[0][1],) if kind != "multivalue" else tuple(values)

    if depth is None:
        depths = [rng.random() for _ in range(n_needles)]
    elif isinstance(depth, (int, float)) and not isinstance(depth, bool):
        depths = [float(depth)] + [rng.random() for _ in range(n_needles - 1)]
    else:
        depths = [float(d) for d in depth]
        if len(depths) != n_needles:
            raise InputError(f"depth has {len(depths)} values for {n_needles} needles of kind={kind!r} (allowed: one "
                             "float, or one per needle). Fix: pass a single depth")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise InputError(f"depth={d!r} (allowed: 0.0 (haystack start) to 1.0 (end)). Fix: e.g. depth=0.5")
    needles = [NEEDLE.format(key=k, value=v) for k, v in pairs]
    filler = _sentences(haystack)
    question = (QUESTION_ALL if kind == "multivalue" else QUESTION).format(key=asked_key)
    prefix = (ANSWER_PREFIX_ALL if kind == "multivalue" else ANSWER_PREFIX).format(key=asked_key)

    per_sentence = max(1e-3, len(_encode(tokenizer, " ".join(filler), False)) / len(filler))
    needle_tokens = [len(_encode(tokenizer, " " + nd, False)) for nd in needles]

    def slots(n_sent: int) -> list[tuple[int, int]]:
        """(filler index, needle) such that each needle's share of the tokens before it (needles included) is its
        depth: sentence index ~ (depth * all tokens - earlier needles' tokens) / tokens per sentence."""
        total = n_sent * per_sentence + sum(needle_tokens)
        out, before, last = [], 0.0, 0
        for j in sorted(range(n_needles), key=lambda j: (depths[j], j)):
            idx = min(n_sent, max(last, round((depths[j] * total - before) / per_sentence)))
            out.append((idx, j))
            before, last = before + needle_tokens[j], idx
        return out

    def render(n_sent: int) -> tuple[str, int, int]:
        sents = [filler[i % len(filler)] for i in range(n_sent)]
        for idx, j in reversed(slots(n_sent)):  # insert from the back so indices stay valid
            sents.insert(idx, needles[j])
        context = " ".join(sents)
        body = f"{HEADER}{context}\n{question}"
        if chat_template:
            head = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                 add_generation_prompt=True)
            text = f"{head}{prefix}"
        else:
            text = f"{body}\nAnswer: {prefix}"
        start = text.index(HEADER) + len(HEADER)
        return text, start, start + len(context)

    special = add_special_tokens and not chat_template

    def count(n_sent: int) -> int:
        return len(_encode(tokenizer, render(n_sent)[0], special))

    if count(0) > length:
        raise InputError(f"length={length} is shorter than the prompt without filler ({count(0)} tokens). "
                         "Fix: ask for a longer length")
    # the largest number of filler sentences that fits: estimate from a sample, bracket, then bisect
    base, m = count(0), 4 * len(filler)
    per = max(1e-3, (count(m) - base) / m)
    est = max(0, int((length - base) / per))
    lo, hi = max(0, int(est * 0.98) - 1), int(est * 1.02) + 2
    while lo > 0 and count(lo) > length:
        lo, hi = lo // 2, lo
    while count(hi) <= length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) <= length:
            lo = mid
        else:
            hi = mid
    text, c0, c1 = render(lo)
    ids, positions, ctx = _locate(tokenizer, text, special, [text.index(nd) for nd in needles], (c0, c1))
    span = max(1, ctx[1] - ctx[0])
    actual = tuple((p - ctx[0]) / span for p in positions)
    return Task(prompt_ids=ids, answer_text=", ".join(answers), kind=kind, answers=answers, key=asked_key,
                length=length, seed=seed,
                depth=None if depth is None else (float(depth) if isinstance(depth, (int, float)) else tuple(depths)),
                depths=actual, needle_positions=tuple(positions), needles=tuple(needles), context_span=ctx,
                prompt=text)


def _locate(tokenizer: Any, text: str, special: bool, chars: list[int], ctx: tuple[int, int]
            ) -> tuple[list[int], list[int], tuple[int, int]]:
    """Token ids of ``text`` and the token index holding each character offset: exact with fast tokenizers
    (``char_to_token``); otherwise the token count of the text before it (approximate at the boundary)."""
    enc = tokenizer(text, add_special_tokens=special)
    ids = _encode(tokenizer, text, special)
    if getattr(enc, "is_fast", False):
        def at(c: int) -> int:
            for cc in range(c, len(text)):
                t = enc.char_to_token(cc)
                if t is not None:
                    return int(t)
            return len(ids)
    else:
        lead = len(_encode(tokenizer, "x", special)) - len(_encode(tokenizer, "x", False))  # e.g. BOS

        def at(c: int) -> int:
            return lead + len(_encode(tokenizer, text[:c], False)) if c < len(text) else len(ids)
    return ids, [at(c) for c in chars], (at(ctx[0]), at(ctx[1]))


def make_tasks(tokenizer: Any, lengths: Iterable[int], *, kinds: Iterable[str] = KINDS,
               depths: Iterable[float | None] = (0.1, 0.5, 0.9), seeds: Iterable[int] = (0,), **kwargs: Any
               ) -> list[Task]:
    """The grid ``kinds x lengths x depths x seeds`` of :func:`make_task`."""
    return [make_task(kind, tokenizer, n, seed, depth=d, **kwargs)
            for kind in kinds for n in lengths for d in depths for seed in seeds]


# ------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------
def score(task: Task, output: str) -> float:
    """Fraction of the task's values found in ``output`` as whole tokens (``1234567`` does not match inside
    ``91234567``)."""
    if not task.answers:
        return 0.0
    found = sum(1 for a in task.answers if re.search(rf"(?<![0-9A-Za-z]){re.escape(a)}(?![0-9A-Za-z])", output))
    return found / len(task.answers)


def is_correct(task: Task, output: str) -> bool:
    """Exact match of every expected value (all or nothing)."""
    return score(task, output) == 1.0


# ------------------------------------------------------------------------------------------------
# generation and evaluation
# ------------------------------------------------------------------------------------------------
GenerateFn = Callable[[Any, Tensor, int], Sequence[int]]


def greedy_generate(model: Any, input_ids: Tensor, max_new_tokens: int, *, eos_token_id: Any = None) -> list[int]:
    """Greedy decoding with a ``DynamicCache``: one prefill forward, then one token at a time (argmax). Stops at an
    EOS id (``eos_token_id``, else the model's generation config). Returns the new token ids."""
    from transformers import DynamicCache

    if eos_token_id is None:
        gen_cfg = getattr(model, "generation_config", None)
        eos_token_id = getattr(gen_cfg, "eos_token_id", None)
    eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else
              ([] if eos_token_id is None else [eos_token_id]))
    cache = DynamicCache(config=model.config) if _accepts(DynamicCache.__init__, "config") else DynamicCache()
    params = _params(model.forward)
    kw: dict[str, Any] = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in params:  # never materialise [N, vocab] logits for a long prompt
        kw["logits_to_keep"] = 1
    out: list[int] = []
    x = input_ids
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            res = model(input_ids=x, **kw)
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            if nxt in eos:
                break
            x = torch.tensor([[nxt]], device=input_ids.device)
    return out


def _params(fn: Any) -> set[str]:
    import inspect
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


def _accepts(fn: Any, name: str) -> bool:
    return name in _params(fn)


def _label(strategy: Any) -> str:
    if strategy is None:
        return "dense"
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, Mapping):
        opts = ",".join(f"{k}={v}" for k, v in strategy.items() if k != "preset")
        return f"{strategy.get('preset', 'sparsekit')}({opts})" if opts else str(strategy.get("preset", "sparsekit"))
    return str(getattr(strategy, "name", strategy))


def _num_layers(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "num_hidden_layers", None)
    return int(n) if isinstance(n, int) else None


def evaluate(model: Any, tokenizer: Any, tasks: Iterable[Task], *, strategy: Any = None,
             max_new_tokens: int | None = None, generate: GenerateFn | None = None, min_seq_len: int = 0,
             label: str | None = None, **enable_options: Any) -> list[dict[str, Any]]:
    """Run every task with greedy decoding and score it; one dict per task.

    ``strategy``: ``None`` runs the model as it is (dense, or whatever it was set to); a preset name, a dict of
    :func:`sparsekit.hf.enable` options (``{"preset": "proxyattn", "budget": {"gamma": 0.9}, "kernel": "torch"}``)
    or a ``SparseAttention`` switches the model to sparse prefill with ``sparsekit.hf.enable`` for the run and
    restores it with ``sparsekit.hf.disable`` afterwards. ``min_seq_len`` (default 0: every prefill goes sparse,
    so short tasks measure the strategy too) and ``enable_options`` go to ``enable``. ``max_new_tokens``: default
    the answer's token count plus 8. ``generate(model, input_ids [1, N], max_new_tokens) -> new ids`` replaces
    :func:`greedy_generate`.

    Each dict: ``task`` (kind), ``name``, ``length`` (prompt tokens), ``requested_length``, ``depth``, ``seed``,
    ``strategy``, ``correct``, ``score``, ``output``, ``output_ids``, ``answer``, ``density`` (kept / causal
    blocks of the prefill averaged over all layers, dense layers counting 1.0), ``sparse_layers`` (layers whose
    prefill went sparse), ``layer_density`` (``{layer: density}`` of those) and ``seconds``.
    """
    import sparsekit.hf as skhf

    gen = generate or greedy_generate
    tasks = list(tasks)
    enabled = strategy is not None
    if enabled:
        if isinstance(strategy, Mapping):
            opts = dict(strategy)
            preset = opts.pop("preset", None)
            opts.setdefault("min_seq_len", min_seq_len)
            opts.update(enable_options)
            skhf.enable(model, preset, **opts)
        else:
            skhf.enable(model, strategy, min_seq_len=min_seq_len, **enable_options)
    name = label or (skhf.settings(model).default.name if enabled and not isinstance(strategy, str)
                     else _label(strategy))
    n_layers = _num_layers(model)
    device = _device(model)
    results: list[dict[str, Any]] = []
    try:
        for task in tasks:
            if isinstance(model, torch.nn.Module):
                skhf.reset_stats(model)
            ids = torch.tensor([task.prompt_ids], dtype=torch.long, device=device)
            budget = max_new_tokens or len(_encode(tokenizer, " " + task.answer_text, False)) + 8
            t0 = time.perf_counter()
            new = [int(t) for t in gen(model, ids, budget)]
            seconds = time.perf_counter() - t0
            output = tokenizer.decode(new, skip_special_tokens=True)
            sparse = {int(r["layer"]): float(r["density"]) for r in
                      (skhf.stats(model, sparse_only=True) if isinstance(model, torch.nn.Module) else [])
                      if r.get("route") == "sparse" and r.get("density") is not None}
            total = n_layers if n_layers is not None else len(sparse)
            density = (sum(sparse.values()) + (total - len(sparse))) / total if total else 1.0
            s = score(task, output)
            results.append(dict(task=task.kind, name=task.name, length=task.n_tokens, requested_length=task.length,
                                depth=task.depth, seed=task.seed, strategy=name, correct=s == 1.0, score=s,
                                output=output, output_ids=new, answer=task.answer_text, density=density,
                                sparse_layers=len(sparse), layer_density=sparse, seconds=seconds))
    finally:
        if enabled:
            skhf.disable(model)
    return results


def _device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def summarize(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy, mean score and mean density per ``(strategy, task, requested_length)``, in first-seen order."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["strategy"], r["task"], r["requested_length"]), []).append(r)
    out = []
    for (strat, kind, length), rows in groups.items():
        dens = [r["density"] for r in rows if r.get("density") is not None]
        out.append(dict(strategy=strat, task=kind, length=length, n=len(rows),
                        accuracy=sum(bool(r["correct"]) for r in rows) / len(rows),
                        score=sum(float(r["score"]) for r in rows) / len(rows),
                        density=sum(dens) / len(dens) if dens else None))
    return out
