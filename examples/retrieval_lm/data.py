"""Seeded synthetic multi-key associative recall over raw token ids (no tokenizer).

A sequence is a haystack of random *filler* tokens in which ``P`` key-value pairs are scattered at random
depths, followed by queries that name a key and are answered by its value::

    BOS  f f f  SEP k1 v1  f f f f  SEP k2 v2  f f ... f  QUERY k2 v2  QUERY k1 v1 ...
                                                              ^^ ^^ the model predicts v2 at the k2 position

Vocabulary (``Vocab``, 1024 ids by default): ``0..15`` specials (PAD, BOS, SEP, QUERY, EOS, the rest
reserved), then 256 key ids, 256 value ids and 496 filler ids (disjoint ranges). Keys are distinct within a
sequence, values are drawn independently (duplicates allowed: only the key determines the answer), a value is
``value_len`` tokens (default 1). With ``echo=True`` each pair is written ``SEP k v k``: the key again after
its value, supervised at the value's last token. Predicting the token before the current one is a one-hop task
that trains the previous-token heads directly and densely; without it their only training signal is through the
retrieval head that needs them, and training sits for thousands of steps on the plateau where the model copies
*some* value of the context (accuracy ~1/P). Queries stay ``QUERY k v``. Answering needs an induction circuit (previous-token head + content match
against the query key), reading a single far-back position: the needle can sit anywhere in the context.

**Fused needles** (``Vocab(fused=True)``, train.py's default): each pair is one token ``SEP n`` whose id names
both its key and its value (``n_keys * n_values`` needle ids after the filler), queries stay ``QUERY k v``::

    BOS  f f  SEP n(k1,v1)  f f f  SEP n(k2,v2)  f ... f  QUERY k2 v2

Answering still means reading one far-back position that can sit anywhere in the context (the query key
must be matched against every needle, then the value read from the match), but it is a one-hop retrieval: a
single attention head can learn it directly, while the two-token pair needs a two-layer induction circuit, whose
formation kept the GPU runs of 2026-11-28 on the copy-any-value plateau (README.md, "Status"). On the CPU, a
2-layer model (hidden 128, 8 query / 2 KV heads) on 64-token sequences with up to 8 pairs reached 0.95 on held-out
8-pair prompts after 600 steps of 64 sequences with fused needles (32 keys x 32 values) and stayed at ~1/P
for 2,600 steps with two-token pairs (with or without echo).

Queries are drawn with replacement (see ``_sequences``).

Everything is generated with ``torch`` on the CPU from a ``torch.Generator`` seeded by the caller, so the same
seed gives the same tokens on every machine (training batches are moved to the GPU afterwards).

* :func:`make_batch` - training sequences: ``Q`` queries at the end, ``labels`` = -100 except at the
  positions whose next token is an answer token (already shifted: ``labels[t]`` is the target of position
  ``t``).
* :func:`make_prompts` - held-out evaluation prompts: one query at the very end (the prompt ends with
  ``QUERY k``), the answer is the value; seeds are disjoint from training (``EVAL_SEED_BASE``).
* ``phrases``: the filler is a random sequence of short random phrases from a per-sequence pool (each phrase used
  about 8 times), and ``filler_labels`` holds next-token targets on it. Predicting a repeated phrase is the
  same induction circuit (find the earlier occurrence of the current token, copy what followed) with a
  target at nearly every position, so the circuit forms early in training instead of after a long plateau
  (with i.i.d. filler and answers as the only targets, 4,000 steps of 131K tokens stayed at ~1/P accuracy:
  the model copied *some* value of the context).
* :class:`Curriculum` - the length/pair schedule of train.py, as a function of training progress in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

PAD, BOS, SEP, QUERY, EOS = 0, 1, 2, 3, 4
N_SPECIAL = 16
IGNORE = -100
#: evaluation prompt ``k`` of a length uses seed ``EVAL_SEED_BASE + length * 1000 + k``; training batches use seeds
#: below 2**31 derived from ``--seed`` and the step (see train.py), so the two never meet.
EVAL_SEED_BASE = 1 << 40


@dataclass(frozen=True)
class Vocab:
    """Token id ranges. ``size`` is the model's ``vocab_size``."""

    n_keys: int = 256
    n_values: int = 256
    n_filler: int = 496
    #: ``fused`` needles: one id per (key, value) combination after the filler ids (``n_keys * n_values`` more ids)
    fused: bool = False

    @property
    def key0(self) -> int:
        return N_SPECIAL

    @property
    def value0(self) -> int:
        return N_SPECIAL + self.n_keys

    @property
    def filler0(self) -> int:
        return N_SPECIAL + self.n_keys + self.n_values

    @property
    def needle0(self) -> int:
        """First fused-needle id: needle ``(k, v)`` is ``needle0 + (k - key0) * n_values + (v - value0)``."""
        return self.filler0 + self.n_filler

    @property
    def size(self) -> int:
        return self.needle0 + (self.n_keys * self.n_values if self.fused else 0)

    def kind(self, token: int) -> str:
        """``"special"``, ``"key"``, ``"value"`` or ``"filler"``."""
        if token < N_SPECIAL:
            return "special"
        if token < self.value0:
            return "key"
        if token < self.filler0:
            return "value"
        if token < self.needle0:
            return "filler"
        return "needle"

    def to_dict(self) -> dict:
        return {**asdict(self), "n_special": N_SPECIAL, "size": self.size, "needle0": self.needle0,
                "specials": {"PAD": PAD, "BOS": BOS, "SEP": SEP, "QUERY": QUERY, "EOS": EOS}}


def pair_width(value_len: int = 1, echo: bool = False, fused: bool = False) -> int:
    """Tokens of one pair in the haystack: ``SEP k v.. (k)``, or ``SEP n`` for a fused needle."""
    return 2 if fused else 2 + value_len + int(echo)


def _sequences(batch: int, length: int, n_pairs: int, n_queries: int, value_len: int, g: torch.Generator,
               vocab: Vocab, echo: bool = False, phrases: int = 0, phrase_len: int = 8) -> dict[str, torch.Tensor]:
    """``batch`` sequences of exactly ``length`` tokens (queries complete, answers included)."""
    Wq = 2 + value_len  # QUERY k v..
    W = pair_width(value_len, echo, vocab.fused)  # SEP k v.. (k), or SEP n (fused)
    if vocab.fused and (value_len != 1 or echo):
        raise ValueError(f"fused needles carry one value token and no echo (got value_len={value_len}, "
                         f"echo={echo}); use value_len=1, echo=False, or an unfused Vocab")
    hay = length - 1 - n_queries * Wq
    if n_pairs < max(1, n_queries) or n_pairs > vocab.n_keys:
        raise ValueError(f"n_pairs={n_pairs} (allowed: n_queries={n_queries} <= n_pairs <= n_keys={vocab.n_keys})")
    if hay < n_pairs * W:
        raise ValueError(f"length={length} is too short for {n_pairs} pairs and {n_queries} queries "
                         f"(needs at least {1 + (n_pairs + n_queries) * W} tokens)")
    B, P, Q = batch, n_pairs, n_queries
    if phrases:  # filler = random draws from the sequence's own pool of random phrases (each used ~8 times)
        n_pool = max(phrases, length // (8 * phrase_len))
        pool = torch.randint(vocab.filler0, vocab.needle0, (B, n_pool, phrase_len), generator=g)
        pick = torch.randint(0, n_pool, (B, -(-length // phrase_len)), generator=g)
        ids = pool[torch.arange(B)[:, None], pick].reshape(B, -1)[:, :length].contiguous()
    else:
        ids = torch.randint(vocab.filler0, vocab.needle0, (B, length), generator=g)
    ids[:, 0] = BOS
    # non-overlapping pair starts, uniform-ish over the haystack: sorted draws plus W * rank
    u = torch.randint(0, hay - P * W + 1, (B, P), generator=g).sort(dim=1).values
    start = 1 + u + W * torch.arange(P)
    keys = torch.rand(B, vocab.n_keys, generator=g).argsort(dim=1)[:, :P] + vocab.key0  # distinct per sequence
    vals = torch.randint(0, vocab.n_values, (B, P, value_len), generator=g) + vocab.value0
    rows = torch.arange(B)[:, None]
    ids[rows, start] = SEP
    if vocab.fused:  # SEP n: one token names the key and carries the value
        ids[rows, start + 1] = vocab.needle0 + (keys - vocab.key0) * vocab.n_values + (vals[:, :, 0] - vocab.value0)
    else:
        ids[rows, start + 1] = keys
        for j in range(value_len):
            ids[rows, start + 2 + j] = vals[:, :, j]
    labels = torch.full((B, length), IGNORE, dtype=torch.long)
    if echo:  # the key again after its value, predicted at the value's last token: trains a previous-token head
        ids[rows, start + 2 + value_len] = keys
        labels[rows, start + 1 + value_len] = keys
    # queries: Q pairs drawn with replacement. Distinct queries would leak the answer: with Q = P, the values not
    # yet asked for shrink to one, and a model that copies "a value of the context not queried yet" scores
    # sum(1/j)/P without retrieving anything (seen on the CPU: training accuracy above the copy level while held-out
    # single-query prompts stayed at 1/P).
    pick = torch.randint(0, P, (B, Q), generator=g)
    qstart = 1 + hay + Wq * torch.arange(Q)
    ids[rows, qstart] = QUERY
    ids[rows, qstart + 1] = keys.gather(1, pick)
    qvals = vals.gather(1, pick[:, :, None].expand(B, Q, value_len))
    for j in range(value_len):
        ids[rows, qstart + 2 + j] = qvals[:, :, j]
        labels[rows, qstart + 1 + j] = qvals[:, :, j]  # predicted at the previous position
    depth = start.gather(1, pick).float() / length  # where each queried pair sits (0 = start of the context)
    # next-token targets inside the haystack where the next token is filler (phrases make them predictable)
    nxt = ids[:, 1:]
    nxt_filler = (nxt >= vocab.filler0) & (nxt < vocab.needle0)
    lm = torch.where(nxt_filler & (torch.arange(1, length) < 1 + hay), nxt, IGNORE)
    filler_labels = torch.cat([lm, torch.full((B, 1), IGNORE, dtype=torch.long)], 1)
    return {"input_ids": ids, "labels": labels, "filler_labels": filler_labels, "pair_start": start, "keys": keys,
            "values": vals, "query_pairs": pick, "depth": depth}


def make_batch(batch: int, length: int, n_pairs: int, n_queries: int, seed: int, *, value_len: int = 1,
               vocab: Vocab = Vocab(), echo: bool = False, phrases: int = 0, phrase_len: int = 8
               ) -> dict[str, torch.Tensor]:
    """Training batch: ``input_ids`` ``[batch, length]``, ``labels`` (``-100`` except answer targets), and
    the ground truth (``pair_start``, ``keys``, ``values``, ``query_pairs``, ``depth``)."""
    g = torch.Generator().manual_seed(int(seed))
    return _sequences(batch, length, n_pairs, n_queries, value_len, g, vocab, echo, phrases, phrase_len)


def make_prompts(n: int, length: int, *, n_pairs: int = 32, value_len: int = 1, seed: int | None = None,
                 vocab: Vocab = Vocab(), echo: bool = False, phrases: int = 0, phrase_len: int = 8
                 ) -> dict[str, torch.Tensor]:
    """``n`` evaluation prompts of exactly ``length`` tokens ending with ``QUERY key``; ``answers`` ``[n,
    value_len]`` is the value of that key, ``depth`` ``[n]`` the relative position of its pair.

    Prompt ``i`` is drawn from its own generator, seeded ``seed + i`` (default ``seed``: ``EVAL_SEED_BASE + length *
    1000``), so it is the same on every machine and for every ``n`` (the first 100 prompts of ``n=200`` are the
    prompts of ``n=100``). ``n_pairs`` is capped so pairs fill at most half of the haystack.
    """
    seed = EVAL_SEED_BASE + length * 1000 if seed is None else seed
    n_pairs = max(1, min(n_pairs, vocab.n_keys,
                         (length - 3 - value_len) // (2 * pair_width(value_len, echo, vocab.fused))))
    seqs = [_sequences(1, length + value_len, n_pairs, 1, value_len, torch.Generator().manual_seed(int(seed) + i),
                       vocab, echo, phrases, phrase_len) for i in range(n)]
    ids = torch.cat([q["input_ids"] for q in seqs])
    depth = torch.cat([q["depth"][:, 0] for q in seqs])
    needle = torch.cat([q["pair_start"].gather(1, q["query_pairs"])[:, 0] for q in seqs])
    return {"input_ids": ids[:, :length].contiguous(), "answers": ids[:, length:].contiguous(), "depth": depth,
            "needle": needle, "n_pairs": torch.tensor(n_pairs), "seed": torch.tensor(seed)}


def max_pairs(length: int, n_queries: int, value_len: int = 1, cap: int = 64, echo: bool = False,
              fused: bool = False) -> int:
    """Largest pair count train.py uses at ``length``: pairs fill at most half of the haystack, at most ``cap``."""
    hay = length - 1 - n_queries * (2 + value_len)
    return max(n_queries, min(cap, hay // (2 * pair_width(value_len, echo, fused))))


@dataclass
class Stage:
    """Lengths ``[min_len, max_len]`` (log-uniform, multiples of ``multiple``) from training progress ``start``."""

    start: float
    min_len: int
    max_len: int


@dataclass
class Curriculum:
    """Short sequences first (the induction circuit forms there, cheaply), then long ones.

    Progress ``p`` in [0, 1] is ``step / steps`` (``--steps``) or ``elapsed / budget`` (``--minutes``). Each step
    draws one length (all sequences of a batch have the same length: no padding), a pair count ``P`` in
    ``[min_pairs, max_pairs(length)]`` (half of the steps uniform, half log-uniform, so that easy few-pair
    sequences - where copying *a* value in context already pays - are frequent while the circuit forms),
    ``min(n_queries, P)`` queries, and ``batch = tokens_per_step // length`` sequences.
    """

    stages: list[Stage] = field(default_factory=lambda: [Stage(0.0, 128, 1024), Stage(0.2, 512, 4096),
                                                         Stage(0.4, 1024, 16384)])
    tokens_per_step: int = 1 << 17
    n_queries: int = 16
    min_pairs: int = 1
    max_pairs: int = 64
    value_len: int = 1
    multiple: int = 64
    long_fraction: float = 0.5  # in the last stage, this share of steps uses the stage's max length exactly
    echo: bool = False  # pairs written SEP k v k (see make_batch)
    phrases: int = 0  # filler from a pool of this many random phrases per sequence (0: i.i.d. filler)
    phrase_len: int = 8
    fused: bool = False  # one-token needles (Vocab.fused): pairs are 2 tokens wide

    def stage(self, p: float) -> int:
        i = 0
        for j, s in enumerate(self.stages):
            if p >= s.start:
                i = j
        return i

    def draw(self, p: float, g: torch.Generator) -> dict[str, int]:
        """The shape of one step at progress ``p``: ``length``, ``batch``, ``n_pairs``, ``n_queries``, ``stage``."""
        i = self.stage(p)
        s = self.stages[i]
        last = i == len(self.stages) - 1
        if last and float(torch.rand((), generator=g)) < self.long_fraction:
            length = s.max_len
        else:
            lo, hi = math.log(s.min_len), math.log(s.max_len)
            length = math.exp(lo + (hi - lo) * float(torch.rand((), generator=g)))
            length = max(s.min_len, min(s.max_len, int(round(length / self.multiple)) * self.multiple))
        W = 2 + self.value_len + int(self.echo)
        nq = max(1, min(self.n_queries, (length - 1) // (2 * W)))  # short sequences: fewer queries fit
        hi_p = max_pairs(length, nq, self.value_len, self.max_pairs, self.echo, self.fused)
        lo_p = min(self.min_pairs, hi_p)
        if float(torch.rand((), generator=g)) < 0.5:
            n_pairs = int(torch.randint(lo_p, hi_p + 1, (), generator=g))
        else:
            u = float(torch.rand((), generator=g))
            n_pairs = int(math.floor(math.exp(math.log(lo_p) + u * (math.log(hi_p + 1) - math.log(lo_p)))))
            n_pairs = max(lo_p, min(hi_p, n_pairs))
        q = min(nq, n_pairs)
        batch = max(1, self.tokens_per_step // length)
        return {"length": length, "batch": batch, "n_pairs": n_pairs, "n_queries": q, "stage": i}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Curriculum:
        d = dict(d)
        d["stages"] = [Stage(**s) for s in d["stages"]]
        return cls(**d)


def prompt_format(meta: dict) -> dict:
    """The task-format arguments of :func:`make_prompts` (``echo``, ``phrases``, ``phrase_len``, ``vocab``) that a model
    was trained with, from its ``retrieval_lm.json`` (models from before these options: i.i.d. filler)."""
    v = meta.get("vocab", {})
    vocab = Vocab(**{k: int(v[k]) for k in ("n_keys", "n_values", "n_filler") if k in v}, fused=bool(v.get("fused", False)))
    return {"echo": bool(meta.get("echo", False)), "phrases": int(meta.get("phrases", 0)),
            "phrase_len": int(meta.get("phrase_len", 8)), "vocab": vocab}


def check_sequence(ids: torch.Tensor, vocab: Vocab = Vocab(), value_len: int = 1,
                   echo: bool = False) -> dict[int, tuple[int, ...]]:
    """Parse one sequence's pairs (``SEP k v..``) into ``{key: value tokens}``; raises if a key repeats.

    Used by the tests to check that answers are the values of the queried keys.
    """
    table: dict[int, tuple[int, ...]] = {}
    t = ids.tolist()
    for i, tok in enumerate(t):
        if tok == SEP and vocab.fused:
            n = t[i + 1] - vocab.needle0
            if not 0 <= n < vocab.n_keys * vocab.n_values:
                raise AssertionError(f"SEP at {i} is followed by {t[i + 1]}, not a fused needle")
            k, v = vocab.key0 + n // vocab.n_values, vocab.value0 + n % vocab.n_values
            if k in table:
                raise AssertionError(f"key {k} appears twice")
            table[k] = (v,)
        elif tok == SEP:
            k = t[i + 1]
            if k in table:
                raise AssertionError(f"key {k} appears twice")
            table[k] = tuple(t[i + 2: i + 2 + value_len])
            if echo and t[i + 2 + value_len] != k:
                raise AssertionError(f"pair at {i}: echo {t[i + 2 + value_len]} is not its key {k}")
    return table
