"""Task suite: counterfactual contract, labels and answers, split hygiene, determinism, bad input."""

from __future__ import annotations

import polars as pl
import pytest

from sage_core.prompts.corpus import CorpusConfig, build_corpus
from sage_core.prompts.library import TASKS, get_task
from sage_core.prompts.task import DatasetConfig, TaskError, generate_prompts, pair_target_token


@pytest.fixture(scope="module")
def tables(tokenizer):
    return {n: generate_prompts(get_task(n), DatasetConfig(task=n, n_train=64, n_test=32), tokenizer, 32) for n in TASKS}


def test_at_least_four_tasks_three_templates_each():
    assert {"ioi", "greater_than", "gendered_pronoun", "sva"} <= set(TASKS)
    for name in TASKS:
        assert len(get_task(name).templates) >= 3


@pytest.mark.parametrize("name", sorted(TASKS))
def test_counterfactual_differs_only_at_attribute_tokens(tables, name):
    task = get_task(name)
    df = tables[name]
    clean = {r["prompt_id"]: r for r in df.filter(pl.col("pair_of").is_null()).iter_rows(named=True)}
    cfs = df.filter(pl.col("pair_of").is_not_null())
    assert len(cfs) == len(clean) * len(task.attributes)
    for r in cfs.iter_rows(named=True):
        c = clean[r["pair_of"]]
        assert len(r["tokens"]) == len(c["tokens"])
        changed = [a.name for a in task.attributes if r[f"attr_{a.name}"] != c[f"attr_{a.name}"]]
        assert changed == [r["pair_attr"]]
        swap = task.attribute(r["pair_attr"]).swaps_roles
        for role in task.roles:
            other = role
            if swap and role in swap:
                other = swap[1] if role == swap[0] else swap[0]
            assert r[f"pos_{role}"] == c[f"pos_{other}"]
        diff_pos = {i for i, (a, b) in enumerate(zip(r["tokens"], c["tokens"], strict=True)) if a != b}
        role_pos = {c[f"pos_{role}"] for role in task.roles}
        assert diff_pos, "a counterfactual must change something"
        assert diff_pos <= role_pos, f"{name}/{r['pair_attr']}: changed tokens outside role positions: {diff_pos}"


def _word(tok, i):
    return tok.convert_ids_to_tokens(int(i))


def test_ioi_labels_roles_and_answers(tables, tokenizer):
    for r in tables["ioi"].iter_rows(named=True):
        t = r["tokens"]
        io, s = _word(tokenizer, t[r["pos_IO"]]), _word(tokenizer, t[r["pos_S1"]])
        assert io == r["attr_IO"] and s == r["attr_S"] and _word(tokenizer, t[r["pos_S2"]]) == s
        assert (r["pos_IO"] < r["pos_S1"]) == (r["attr_Pos"] == "ABB")
        assert _word(tokenizer, r["answer_token"]) == io and _word(tokenizer, r["cf_answer_token"]) == s
        assert r["pos_END"] == len(t) - 1


def test_greater_than_answers(tables, tokenizer):
    for r in tables["greater_than"].iter_rows(named=True):
        t = r["tokens"]
        yy = int(_word(tokenizer, t[r["pos_YY"]]))
        assert f"{yy:02d}" == r["attr_YY"] and _word(tokenizer, t[r["pos_CC"]]) == r["attr_century"]
        assert int(_word(tokenizer, r["answer_token"])) == yy + 1
        assert int(_word(tokenizer, r["cf_answer_token"])) == yy - 1
        assert _word(tokenizer, t[-1]) == r["attr_century"]  # prompt ends with the century again


def test_pronoun_and_sva_answers(tables, tokenizer):
    from sage_core.prompts.tasks.vocab import FEMALE_NAMES, MALE_NAMES

    for r in tables["gendered_pronoun"].iter_rows(named=True):
        name = _word(tokenizer, r["tokens"][r["pos_NAME"]])
        assert r["attr_gender"] == ("male" if name in MALE_NAMES else "female")
        assert name in MALE_NAMES + FEMALE_NAMES
        assert _word(tokenizer, r["answer_token"]) == ("he" if r["attr_gender"] == "male" else "she")
    for r in tables["sva"].iter_rows(named=True):
        subj = _word(tokenizer, r["tokens"][r["pos_SUBJ"]])
        assert (r["attr_subject_number"] == "pl") == subj.endswith("s")
        assert _word(tokenizer, r["answer_token"]) == ("are" if r["attr_subject_number"] == "pl" else "is")


def test_deterministic_under_seed(tokenizer):
    task = get_task("ioi")
    a = generate_prompts(task, DatasetConfig(task="ioi", n_train=20, n_test=10, seed=3), tokenizer)
    b = generate_prompts(task, DatasetConfig(task="ioi", n_train=20, n_test=10, seed=3), tokenizer)
    c = generate_prompts(task, DatasetConfig(task="ioi", n_train=20, n_test=10, seed=4), tokenizer)
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_test_prompts_never_in_corpus_but_vocabulary_is(tables, tokenizer, name):
    task = get_task(name)
    corpus = build_corpus([task], CorpusConfig(n_task_sentences=3000, n_background=0), dataset_seed=0)
    test_texts = tables[name].filter((pl.col("split") == "test") & pl.col("pair_of").is_null())["text"].to_list()
    corpus_prompts = {line.rsplit(" ", 1)[0] for line in corpus}
    assert not corpus_prompts & set(test_texts)
    train = tables[name].filter(pl.col("split") == "train")
    test = tables[name].filter(pl.col("split") == "test")
    assert len(train) and len(test)
    corpus_words = {w for line in corpus for w in tokenizer.tokenize(line)}
    test_words = {w for t in test["tokens"].to_list() for w in tokenizer.convert_ids_to_tokens(t[1:])}
    assert test_words <= corpus_words, f"test prompts use words never trained on: {test_words - corpus_words}"


def test_pair_target_token_rule():
    assert pair_target_token(clean_answer=5, clean_competing=7, cf_answer=9) == 9  # answer changes (IO)
    assert pair_target_token(clean_answer=5, clean_competing=7, cf_answer=5) == 7  # answer kept (S, Pos)


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(TaskError, match="unknown task 'iio'.*did you mean 'ioi'"):
        get_task("iio")


def test_prompt_longer_than_n_ctx_is_refused(tokenizer):
    with pytest.raises(TaskError, match="exceeds the model's n_ctx=8"):
        generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=2, n_test=2), tokenizer, max_len=8)


def test_a_slow_tokenizer_is_refused_in_one_line(tokenizer):
    class Slow:
        """A tokenizer without character offsets (a Python 'slow' one)."""

        bos_token_id = tokenizer.bos_token_id
        is_fast = False

        def __call__(self, text, **kw):
            return tokenizer(text, **kw)

    with pytest.raises(TaskError, match="only a fast .* tokenizer gives; load the model's tokenizer with use_fast"):
        generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=2, n_test=2), Slow())


def test_word_unknown_to_the_tokenizer_is_refused(tokenizer):
    task = get_task("ioi", names=["Mary", "John", "Zebedee"])
    with pytest.raises(TaskError, match="does not know 'Zebedee'"):
        generate_prompts(task, DatasetConfig(task="ioi", n_train=30, n_test=10), tokenizer)


def test_an_attribute_filter_keeps_the_named_attributes_and_refuses_one_matching_nothing():
    from sage_core.prompts.library import task_attributes

    assert task_attributes(["ioi"]) == [("ioi", "IO"), ("ioi", "S"), ("ioi", "Pos")]  # the task's own order
    assert task_attributes(["ioi", "sva"], ["IO"]) == [("ioi", "IO")]
    with pytest.raises(ValueError, match=r"no attribute matches \['colour'\]; the tasks have \['IO', 'Pos', 'S'\]"):
        task_attributes(["ioi"], ["colour"])
