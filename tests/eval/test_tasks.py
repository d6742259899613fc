"""RULER-style needle tasks: prompts (length, needles at depth), exact-match scoring, and evaluate() end to end
on a tiny random model with a tokenizer trained in-process (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from sparsekit import tasks as T  # noqa: E402
from sparsekit.errors import ConfigError, InputError  # noqa: E402

FULL = dict(estimator="proxy", budget="dynamic(gamma=1.0)", kernel="torch", block_q=16, block_k=16)
SPARSE = dict(estimator="proxy(stride=4)", budget="dynamic(gamma=0.6,min_budget=0)", kernel="torch", block_q=16,
              block_k=16)


@pytest.fixture(scope="module")
def tok():
    """Byte-level BPE trained on the task templates: round-trips any text, numbers included."""
    corpus = [T.HEADER, T.NOISE, T.NEEDLE, T.QUESTION, T.QUESTION_ALL, T.ANSWER_PREFIX, T.ANSWER_PREFIX_ALL,
              "Answer:", " ".join(T._ADJECTIVES), " ".join(T._NOUNS), "0123456789 " * 3]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      attn_implementation="sdpa", bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind", T.KINDS)
@pytest.mark.parametrize("length", [300, 2000])
def test_prompt_length_and_needles(tok, kind, length):
    task = T.make_task(kind, tok, length, seed=5, depth=0.4)
    n = task.n_tokens
    assert length - 40 < n <= length  # as long as the filler allows, never longer
    assert task.prompt_ids == tok(task.prompt).input_ids
    assert task.prompt_ids[0] == tok.bos_token_id
    expected = {"single": 1, "multikey": 4, "multivalue": 4}[kind]
    assert len(task.needles) == len(task.needle_positions) == len(task.depths) == expected
    for needle, pos in zip(task.needles, task.needle_positions):
        assert task.prompt.count(needle) == 1
        assert tok.decode(task.prompt_ids[pos:pos + len(tok(needle).input_ids) + 2]).lstrip().startswith(needle)
        assert task.context_span[0] <= pos < task.context_span[1]
    # the asked needle sits at the requested depth (needle and sentence granularity at short lengths)
    tol = 0.05 if length < 1000 else 0.02
    assert abs(task.depths[0] - 0.4) < tol
    # the question asks for the first needle's key; answers are its value(s)
    assert task.key in task.prompt.split("\n")[-2]
    assert task.answers[0] in task.needles[0]
    if kind == "multivalue":
        assert all(a in nd for a, nd in zip(task.answers, task.needles)) and len(set(task.answers)) == 4
        assert task.answer_text == ", ".join(task.answers)
    else:
        assert task.answer_text == task.answers[0]
    if kind == "multikey":
        keys = [nd.split(" for ")[1].split(" is:")[0] for nd in task.needles]
        assert len(set(keys)) == 4 and keys[0] == task.key


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.75, 1.0])
def test_depths(tok, depth):
    task = T.make_task("single", tok, 3000, seed=1, depth=depth)
    assert abs(task.depths[0] - depth) < 0.02
    many = T.make_task("multikey", tok, 3000, seed=1, depth=[0.9, 0.1, 0.5, 0.3])
    assert [round(d, 1) for d in many.depths] == [0.9, 0.1, 0.5, 0.3]
    assert list(many.needle_positions) != sorted(many.needle_positions)


def test_seeded(tok):
    a = T.make_task("multikey", tok, 800, seed=3, depth=None)
    b = T.make_task("multikey", tok, 800, seed=3, depth=None)
    c = T.make_task("multikey", tok, 800, seed=4, depth=None)
    assert a == b
    assert a.prompt_ids != c.prompt_ids and a.answers != c.answers
    longer = T.make_task("multikey", tok, 1600, seed=3, depth=None)  # same needles at every length
    assert longer.needles == a.needles and longer.answers == a.answers
    assert T.make_task("niah_multivalue", tok, 400, seed=0).kind == "multivalue"


def test_bad_arguments(tok):
    with pytest.raises(ConfigError, match="kind="):
        T.make_task("needle", tok, 500)
    with pytest.raises(InputError, match="shorter than the prompt"):
        T.make_task("single", tok, 20)
    with pytest.raises(InputError, match="depth"):
        T.make_task("single", tok, 500, depth=1.5)
    with pytest.raises(InputError, match="one per needle"):
        T.make_task("multikey", tok, 500, depth=[0.1, 0.2])


def test_scoring():
    task = T.Task(prompt_ids=[1], answer_text="1234567", kind="single")
    assert task.answers == ("1234567",)
    assert T.is_correct(task, " 1234567.")
    assert T.is_correct(task, "The number is 1234567, I think")
    assert not T.is_correct(task, " 91234567")       # inside a longer number
    assert not T.is_correct(task, " 12345678")
    assert not T.is_correct(task, " 123 4567")
    assert not T.is_correct(task, "")
    multi = T.Task(prompt_ids=[1], answer_text="1111111, 2222222, 3333333", kind="multivalue")
    assert T.score(multi, "2222222 and 1111111") == pytest.approx(2 / 3)
    assert not T.is_correct(multi, "2222222 and 1111111")
    assert T.is_correct(multi, "3333333; 1111111; 2222222")


def test_evaluate_scores_what_generate_returns(tok):
    """A fake generation function returning known text: evaluate() decodes and scores it (no model involved)."""
    tasks = [T.make_task("single", tok, 300, seed=s) for s in range(2)] + [T.make_task("multivalue", tok, 300)]
    texts = [f" {tasks[0].answer_text}.", " 0000000.", " " + " and ".join(tasks[2].answers[:3])]

    def fake(model, ids, max_new_tokens):
        assert ids.shape == (1, len(current[0].prompt_ids)) and max_new_tokens >= 8
        return tok(texts[current[1]], add_special_tokens=False).input_ids

    current = [None, 0]
    out = []
    for i, task in enumerate(tasks):
        current[:] = [task, i]
        out += T.evaluate(object(), tok, [task], generate=fake)
    assert [r["correct"] for r in out] == [True, False, False]
    assert out[2]["score"] == pytest.approx(0.75)
    assert out[0]["output"] == texts[0] and out[0]["answer"] == tasks[0].answer_text
    assert all(r["density"] == 1.0 and r["strategy"] == "dense" for r in out)
    rows = T.summarize(out)
    assert [(r["task"], r["n"], r["accuracy"]) for r in rows] == [("single", 2, 0.5), ("multivalue", 1, 0.0)]


def test_evaluate_end_to_end(tok, model):
    tasks = [T.make_task(kind, tok, 320, seed=0, depth=0.5) for kind in T.KINDS]
    dense = T.evaluate(model, tok, tasks, max_new_tokens=6)
    full = T.evaluate(model, tok, tasks, strategy=FULL, max_new_tokens=6)
    sparse = T.evaluate(model, tok, tasks, strategy=SPARSE, max_new_tokens=6)
    assert model.config._attn_implementation == "sdpa"  # restored
    for rows in (dense, full, sparse):
        assert len(rows) == 3
        for r in rows:
            assert set(r) >= {"task", "correct", "output", "density", "output_ids", "strategy"}
            assert len(r["output_ids"]) <= 6 and isinstance(r["correct"], bool)
    assert all(r["density"] == 1.0 and r["sparse_layers"] == 0 for r in dense)
    # full budget: every layer went sparse, every block kept, and greedy decoding is unchanged
    assert all(r["sparse_layers"] == 2 and r["density"] == pytest.approx(1.0) for r in full)
    assert [r["output_ids"] for r in full] == [r["output_ids"] for r in dense]
    assert [r["output"] for r in full] == [r["output"] for r in dense]
    assert "dynamic(gamma=1.0" in full[0]["strategy"]
    # a real budget: sparse prefill with density below 1, reported per layer
    assert all(r["sparse_layers"] == 2 and 0 < r["density"] < 1 for r in sparse)
    assert all(set(r["layer_density"]) == {0, 1} for r in sparse)
    summary = T.summarize(dense + sparse)
    assert {(s["strategy"] == "dense", s["task"]) for s in summary} == {(d, k) for d in (True, False) for k in T.KINDS}
