"""Every task on real tokenizer families: GPT-2's byte-level BPE (its real vocabulary and merges, vendored under
tests/data/gpt2), a sentencepiece-style tokenizer built here, and the built-in word-level tokenizer. Brute force: the
token at each role spells the slot's word, pairs keep length, answers are single tokens."""

from __future__ import annotations

import polars as pl
import pytest

from sage_core.prompts.adapt import MIN_WORDS, adapt_task, pose_task
from sage_core.prompts.corpus import CorpusConfig, build_corpus
from sage_core.prompts.library import TASKS, get_task
from sage_core.prompts.task import DatasetConfig, TaskError, generate_prompts
from tests.tokenizers import gpt2_tokenizer, sentencepiece_tokenizer

# the slot whose word each role's token spells (END: the prompt's last token)
ROLE_SLOTS = {"ioi": {"IO": "attr_IO", "S1": "attr_S", "S2": "attr_S"}, "sva": {}, "greater_than": {"YY": "attr_YY",
              "CC": "attr_century"}, "gendered_pronoun": {}}


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    lines = build_corpus([get_task(t) for t in TASKS], CorpusConfig(n_task_sentences=300, n_background=600), 0)
    # a small sentencepiece vocabulary splits rarer words (some names, plural nouns): the task drops them or is skipped
    return {"gpt2": gpt2_tokenizer(), "sentencepiece": sentencepiece_tokenizer(lines),
            "sentencepiece-400": sentencepiece_tokenizer(lines, vocab_size=400), "builtin": tokenizer}


@pytest.fixture(scope="module")
def adapted(tokenizers):
    """`adapted(family, task)`: `adapt_task` of the task on that tokenizer, computed once per module (each call tokenizes
    thousands of probe prompts); the Task and Adaptation it returns are frozen, so sharing them cannot leak."""
    done = {}

    def get(family: str, name: str):
        if (family, name) not in done:
            done[family, name] = adapt_task(get_task(name), tokenizers[family])
        return done[family, name]

    return get


def _word(tok, token_id: int) -> str:
    return tok.decode([token_id]).strip().lstrip("▁")


@pytest.mark.parametrize("family", ["gpt2", "sentencepiece", "sentencepiece-400", "builtin"])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_role_is_the_token_spelling_its_word(tokenizers, adapted, family, name):
    tok = tokenizers[family]
    task, report = adapted(family, name)
    if task is None:  # a task the tokenizer cannot pose says why in one line
        assert report.skipped and "\n" not in report.skipped
        pytest.skip(f"{family}: {report.summary()}")
    df = generate_prompts(task, DatasetConfig(task=name, n_train=48, n_test=16), tok, 1024)
    clean = {r["prompt_id"]: r for r in df.filter(pl.col("pair_of").is_null()).iter_rows(named=True)}
    for r in df.iter_rows(named=True):
        t = r["tokens"]
        assert t[0] == tok.bos_token_id and r["pos_END"] == len(t) - 1
        # the tokens spell the text (the word-level tokenizer decodes with a space between tokens)
        assert "".join(tok.decode(t[1:]).split()) == "".join(r["text"].split())
        for role in task.roles:  # brute force: decode the token at each role and find it in the prompt's text
            word = _word(tok, t[r[f"pos_{role}"]])
            assert word and word in r["text"], (family, name, role, word, r["text"])
        for role, col in ROLE_SLOTS[name].items():
            assert _word(tok, t[r[f"pos_{role}"]]) == r[col], (family, name, role, r["text"])
        for col in ("answer_token", "cf_answer_token"):  # one token each, and a word of the task
            assert _word(tok, r[col])
        if r["pair_of"]:
            assert len(t) == len(clean[r["pair_of"]]["tokens"])


def test_a_small_sentencepiece_vocabulary_drops_split_words_and_skips_sva(tokenizers, adapted):
    tok = tokenizers["sentencepiece-400"]
    reports = {n: adapted("sentencepiece-400", n)[1] for n in TASKS}
    assert reports["ioi"].skipped is None and reports["ioi"].removed["names"] > 0
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) > 1 for w in reports["ioi"].dropped["names"])
    assert "nouns" in reports["sva"].skipped and "\n" not in reports["sva"].skipped


def test_gpt2_poses_every_task_and_says_what_it_dropped(tokenizers, adapted):
    tok = tokenizers["gpt2"]
    reports = {n: adapted("gpt2", n)[1] for n in TASKS}
    assert all(r.skipped is None for r in reports.values()), {n: r.skipped for n, r in reports.items()}
    # every IOI and SVA word is one GPT-2 token with its leading space; some years split after some centuries, and
    # some names at the start of a sentence
    assert reports["ioi"].n_dropped == 0 and reports["sva"].n_dropped == 0
    assert 0 < reports["greater_than"].n_dropped < 40 and reports["greater_than"].kept["centuries"] >= MIN_WORDS
    assert "years" in reports["greater_than"].summary()
    # the figures the README quotes
    gt = reports["greater_than"]
    assert gt.dropped["centuries"] == ["11"] and gt.removed["centuries"] == 1 and gt.removed["years"] == 31
    assert reports["gendered_pronoun"].dropped == {"female": ["Emma", "Grace", "Helen", "Julia", "Karen", "Linda",
                                                              "Nancy"]}
    ioi = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=4, n_test=4), tok)
    first = ioi.filter(pl.col("pair_of").is_null()).row(0, named=True)
    assert tok.convert_ids_to_tokens(first["tokens"][first["pos_IO"]]) == "Ġ" + first["attr_IO"]


def test_a_tokenizer_without_some_words_drops_them_and_counts_them(tokenizer):
    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.prompts.corpus import background_vocabulary

    task = get_task("ioi")
    gone = {"Mary", "John", "Kate"}
    tok = build_tokenizer((background_vocabulary() | task.vocabulary()) - gone)
    adapted, report = adapt_task(task, tok)
    assert report.dropped == {"names": sorted(gone)} and report.kept["names"] == len(task.names) - 3
    assert not gone & set(adapted.names)
    assert "dropped 3 of 32 names" in report.summary()
    df, posed = pose_task(task, DatasetConfig(task="ioi", n_train=8, n_test=8), tok)
    assert posed.skipped is None and df.height and not gone & set(df["attr_IO"])


def test_a_task_that_cannot_be_posed_is_skipped_with_one_line():
    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.prompts.corpus import background_vocabulary

    task = get_task("gendered_pronoun")
    tok = build_tokenizer((background_vocabulary() | task.vocabulary()) - {"she"})  # an answer word it lacks
    df, posed = pose_task(task, DatasetConfig(task=task.name, n_train=8, n_test=8), tok)
    assert df.height == 0 and "'she'" in posed.skipped and "not one token" in posed.skipped
    few = get_task("ioi", names=["Mary", "John", "Anna"])
    df, posed = pose_task(few, DatasetConfig(task="ioi", n_train=8, n_test=8), tok)
    assert df.height == 0 and f"needs {MIN_WORDS}" in posed.skipped


def test_greater_than_is_not_posed_where_numbers_split_into_digits(tokenizers):
    from tokenizers import Regex, pre_tokenizers

    from tests.tokenizers import sentencepiece_tokenizer as sp

    lines = build_corpus([get_task("greater_than")], CorpusConfig(n_task_sentences=300, n_background=100), 0)
    tok = sp(lines)
    # digits one by one, as Llama 2's and Gemma's sentencepiece models split numbers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [tok.backend_tokenizer.pre_tokenizer, pre_tokenizers.Split(Regex(r"\d"), behavior="isolated")])
    df, posed = pose_task(get_task("greater_than"), DatasetConfig(task="greater_than", n_train=8, n_test=8), tok)
    assert df.height == 0 and posed.skipped and "centuries" in posed.skipped, posed


def test_unfilled_split_is_a_skip_but_a_long_prompt_is_an_error(tokenizer):
    with pytest.raises(TaskError, match="exceeds the model's n_ctx=8"):
        pose_task(get_task("ioi"), DatasetConfig(task="ioi", n_train=2, n_test=2), tokenizer, max_len=8)
    task = get_task("sva", nouns=[("key", "keys"), ("dog", "dogs"), ("box", "boxes"), ("cat", "cats")])
    df, posed = pose_task(task, DatasetConfig(task="sva", n_train=400, n_test=400), tokenizer)
    assert df.height == 0 and "could only make" in posed.skipped


def test_drops_are_counted_in_items_and_a_word_leaves_every_field_of_its_slot(tokenizer):
    from sage_core.model.tokenizer import build_tokenizer
    from sage_core.prompts.corpus import background_vocabulary

    sva = get_task("sva")
    tok = build_tokenizer((background_vocabulary() | sva.vocabulary()) - {"keys", "dogs"})
    _, report = adapt_task(sva, tok)
    assert report.removed == {"nouns": 2} and "dropped 2 of 16 nouns (dogs, keys)" in report.summary()
    both = get_task("gendered_pronoun", male=["John", "James", "Robert", "Alex", "Paul"],
                    female=["Mary", "Sarah", "Linda", "Alex", "Kate"])  # a name given to both
    tok = build_tokenizer((background_vocabulary() | both.vocabulary()) - {"Alex"})
    adapted, report = adapt_task(both, tok)
    assert "Alex" not in adapted.male and "Alex" not in adapted.female
    assert report.removed["male"] == report.removed["female"] == 1


def test_what_cannot_pose_a_task_skips_it_and_never_fails_the_run(tokenizer):
    class Slow:  # no character offsets
        bos_token_id = tokenizer.bos_token_id
        is_fast = False

        def __call__(self, text, **kw):
            return tokenizer(text, **kw)

    df, posed = pose_task(get_task("ioi"), DatasetConfig(task="ioi", n_train=4, n_test=4), Slow())
    assert df.height == 0 and "fast" in posed.skipped
    close = get_task("greater_than", years=[40, 41, 42, 43, 44])  # no year 10 from another: no YY counterfactual
    df, posed = pose_task(close, DatasetConfig(task="greater_than", n_train=4, n_test=4), tokenizer)
    assert df.height == 0 and "no year at least 10" in posed.skipped
