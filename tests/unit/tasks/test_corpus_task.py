"""`prepare-corpus` (issue 24 item 4): real text tokenized by the model's tokenizer into N tokens of fixed-length
sequences, BOS first, written once in the corpus layout under a key of what it holds; the built-in corpus handed on
unchanged (so the built-in run's core-metric keys stay); the corpus's content moves the core metrics' key."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from sage_core.model.tokenizer import build_tokenizer
from sage_core.prompts.corpus_spec import CorpusSpec
from storage.datasets import corpus_ref, read_corpus, write_corpus
from storage.home import SageHome
from storage.refs import ModelRef
from storage.zoo import save_tokenizer
from tasks.corpus import prepare_corpus

WORDS = ["the", "keys", "near", "cabinet", "are", "on", "table", "a", "dog", "saw", "cat", "and", "ran", "to", "park",
         ".", ",", "John", "Mary", "said", "that", "he", "she"]


def _model(h: SageHome, name: str = "m", words=WORDS, n_ctx: int = 64) -> ModelRef:
    """Enough of a saved model for the task: its config's n_ctx and its tokenizer."""
    d = h.model_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"n_ctx": n_ctx}))
    save_tokenizer(h.tokenizer_dir(name), build_tokenizer(words))
    return ModelRef(path=h.relative(d), hash=f"h-{name}")


def _builtin(h: SageHome):
    df = pl.DataFrame({"text": ["a", "b", "c"], "tokens": [[0, 5, 6], [0, 7], [0, 8, 9, 10]],
                       "split": ["heldout", "heldout", "train"]},
                      schema={"text": pl.String, "tokens": pl.List(pl.Int32), "split": pl.String})
    write_corpus(h, "builtin-key", df)
    return corpus_ref(h, "builtin-key")


def _text(n_words: int, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS + ["zebra"]) for _ in range(rng.randrange(3, 15))) for _ in range(n_words // 8)]
    return "\n".join(lines) + "\n"


def _prepare(h: SageHome, spec: str, model: ModelRef, n_tokens: int = 400, context: int = 16):
    return prepare_corpus.fn(CorpusSpec.parse(spec), n_tokens, context, model, _builtin(h), 2, str(h.root))


@pytest.fixture
def home(tmp_path) -> SageHome:
    return SageHome(tmp_path / "home")


def test_a_text_file_becomes_n_tokens_of_fixed_length_sequences_bos_first(home, tmp_path, monkeypatch):
    from storage import text_corpus as tc

    monkeypatch.setattr(tc, "BLOCK_CHARS", 64)  # many blocks: a block boundary never changes a token
    f = tmp_path / "t.txt"
    f.write_text(_text(2000))
    model = _model(home)
    out = _prepare(home, f"text:{f}", model, n_tokens=400, context=16)
    tok = build_tokenizer(WORDS)
    df = read_corpus(home.at(out.ref))
    seqs = df["tokens"].to_list()
    assert out.n_sequences == len(seqs) == 400 // 16 and set(df["split"]) == {"heldout"}
    assert all(len(s) == 16 and s[0] == tok.bos_token_id for s in seqs)
    assert sum(map(len, seqs)) == 400 == out.about["tokens"]
    # brute force: the bodies are the first tokens of the whole file tokenized in one go (one document: no BOS)
    want = tok(f.read_text(), add_special_tokens=False)["input_ids"][: 25 * 15]
    assert [t for s in seqs for t in s[1:]] == want
    assert out.about["spec"] == f"text:{f}" and out.about["sequences"] == 25 and out.about["length"] == 16


def test_the_model_context_caps_the_sequence_length(home, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(_text(2000))
    out = _prepare(home, f"text:{f}", _model(home, n_ctx=8), n_tokens=80, context=128)
    assert out.about["length"] == 8 and out.n_sequences == 10
    assert {len(s) for s in read_corpus(home.at(out.ref))["tokens"].to_list()} == {8}


def test_the_corpus_is_keyed_on_the_text_and_the_tokenizer_not_the_path(home, tmp_path):
    a, b, c = tmp_path / "a.txt", tmp_path / "sub" / "b.txt", tmp_path / "c.txt"
    b.parent.mkdir()
    a.write_text(_text(600))
    b.write_text(_text(600))
    c.write_text(_text(600, seed=1))
    model = _model(home)
    first = _prepare(home, f"text:{a}", model)
    assert _prepare(home, f"text:{b}", model).ref == first.ref  # the same bytes elsewhere: the same corpus
    assert _prepare(home, f"text:{c}", model).ref.hash != first.ref.hash
    other = _model(home, "m2", words=[*WORDS, "zebra"])
    assert _prepare(home, f"text:{a}", other).ref.path != first.ref.path  # another tokenizer
    assert _prepare(home, f"text:{a}", model, n_tokens=320).ref.path != first.ref.path  # another N


def test_text_too_short_for_n_tokens_fails_in_one_line_that_says_what_to_give(home, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("the dog saw the cat . " * 10)  # 60 tokens
    with pytest.raises(ValueError) as e:
        _prepare(home, f"text:{f}", _model(home), n_tokens=400, context=16)
    msg = str(e.value)
    assert "\n" not in msg and "60 tokens" in msg and "--corpus-tokens 64" in msg
    assert len(list((home.root / "datasets" / "corpus").glob("*/corpus.parquet"))) == 1  # the built-in one only


def test_builtin_hands_on_the_zoo_corpus_and_keeps_the_core_metrics_key(home):
    builtin = _builtin(home)
    out = prepare_corpus.fn(CorpusSpec.parse("builtin"), 4096, 128, _model(home), builtin, 256, str(home.root))
    assert out.ref == builtin and out.n_sequences == 256  # exactly what the flow passed before --corpus
    assert out.about == {"spec": "builtin", "tokens": 5, "sequences": 2, "length": None}


def test_the_corpus_moves_the_core_metrics_key(home, tmp_path):
    from storage.refs import SAERef
    from tasks.score import core_key

    a, c = tmp_path / "a.txt", tmp_path / "c.txt"
    a.write_text(_text(600))
    c.write_text(_text(600, seed=1))
    model = _model(home)
    sae = SAERef(spec="zoo:x", name="x", hook="blocks.0.hook_resid_post", hash="h-x", arch="topk", d_sae=8, d_in=4,
                 source="zoo")

    def key(corpus) -> str:
        return core_key(sae, model, corpus.ref, corpus.n_sequences, "m")

    builtin = prepare_corpus.fn(CorpusSpec.parse("builtin"), 4096, 128, model, _builtin(home), 256, str(home.root))
    keys = {key(builtin), key(_prepare(home, f"text:{a}", model)), key(_prepare(home, f"text:{c}", model))}
    assert len(keys) == 3


def test_a_dataset_is_packed_document_by_document_with_bos_between(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "set"
    folder.mkdir()
    docs = [f"the dog saw the cat {'. ' * i}" for i in range(40)]
    pl.DataFrame({"text": docs}).write_parquet(folder / "train.parquet")
    out = _prepare(home, f"hf:{folder}", _model(home), n_tokens=160, context=16)
    tok = build_tokenizer(WORDS)
    stream = []
    for d in docs:
        stream += ([tok.bos_token_id] if stream else []) + tok(d, add_special_tokens=False)["input_ids"]
    seqs = read_corpus(home.at(out.ref))["tokens"].to_list()
    assert len(seqs) == 10 and [t for s in seqs for t in s[1:]] == stream[: 10 * 15]
    assert out.about["content"].startswith("sha256 ")


def test_offline_a_corpus_prepared_before_is_reused_and_without_one_the_error_names_a_text_file(home, tmp_path,
                                                                                              monkeypatch):
    import huggingface_hub.constants as hc

    from storage import text_corpus as tc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = _model(home)
    with pytest.raises(tc.Unreachable) as e:
        _prepare(home, "hf:sage/tiny-text", model)
    assert "--corpus text:" in str(e.value) and "\n" not in str(e.value)

    # a copy in the hub cache: read from it, named by its revision
    from tests.unit.storage.test_text_corpus import REVISION, _cache_dataset, _parquet

    _cache_dataset(tmp_path / "hub", "sage/tiny-text",
                   {"data/train-0.parquet": _parquet(tmp_path, [f"the dog saw the cat {i} ." for i in range(200)])})
    first = _prepare(home, "hf:sage/tiny-text", model)
    assert first.about["content"] == f"revision {REVISION[:12]}"
    # the cache emptied: the corpus SAGE prepared from it is read again
    import shutil

    shutil.rmtree(tmp_path / "hub")
    again = _prepare(home, "hf:sage/tiny-text", model)
    assert again.ref == first.ref and again.n_sequences == first.n_sequences
    assert Path(home.at(again.ref)).is_file()
