"""`--corpus` specs and the packing of real text into sequences (issue 24 item 4): pure, no files."""

from __future__ import annotations

import random

import pytest

from sage_core.prompts.corpus_spec import (
    DEFAULT_TOKENS,
    CorpusSpec,
    default_spec,
    pack_sequences,
    sequence_shape,
)


@pytest.mark.parametrize("text, want", [
    ("builtin", dict(kind="builtin")),
    (" builtin ", dict(kind="builtin")),
    ("text:notes.txt", dict(kind="text", path="notes.txt")),
    ("text:/data/a b.txt", dict(kind="text", path="/data/a b.txt")),
    ("hf:NeelNanda/pile-10k", dict(kind="hf", dataset="NeelNanda/pile-10k", split="train", column="text")),
    ("hf:NeelNanda/pile-10k:validation", dict(kind="hf", dataset="NeelNanda/pile-10k", split="validation")),
    ("hf:org/set:test:content", dict(kind="hf", dataset="org/set", split="test", column="content")),
    ("hf:org/set::content", dict(kind="hf", dataset="org/set", split="train", column="content")),
    ("hf:/data/local-folder", dict(kind="hf", dataset="/data/local-folder")),
])
def test_specs_parse(text, want):
    spec = CorpusSpec.parse(text)
    assert spec.model_dump(include=set(want)) == want
    assert CorpusSpec.parse(str(spec)) == spec  # the canonical text reads back as the same spec


@pytest.mark.parametrize("text", ["", "pile", "text:", "text:  ", "hf:", "hf::train", "hf:a:b:c:d", "file:x.txt",
                                  "Builtin", "builtin:x"])
def test_malformed_specs_fail_in_one_line_that_shows_the_syntax(text):
    with pytest.raises(ValueError) as e:
        CorpusSpec.parse(text)
    msg = str(e.value)
    assert "\n" not in msg and "--corpus" in msg
    assert "text:" in msg or "hf:" in msg


def test_the_default_is_builtin_for_the_builtin_model_and_real_text_for_a_published_one():
    from sage_core.config import EvaluateConfig

    assert default_spec(None) == "builtin" and EvaluateConfig().core_corpus().kind == "builtin"
    pre = EvaluateConfig(pretrained="gpt2", saes=("x/y",)).core_corpus()
    assert pre.kind == "hf" and pre.dataset == "NeelNanda/pile-10k"
    assert EvaluateConfig().corpus_tokens == DEFAULT_TOKENS == 2**17 and EvaluateConfig().corpus_context == 128
    cfg = EvaluateConfig(pretrained="gpt2", saes=("x/y",), corpus="text:a.txt")
    assert cfg.core_corpus() == CorpusSpec(kind="text", path="a.txt")
    assert EvaluateConfig(corpus="hf:org/x").corpus == "hf:org/x:train:text"  # kept in its canonical form
    with pytest.raises(ValueError, match="--corpus"):
        EvaluateConfig(corpus="nonsense")


def test_sequence_shape_fits_whole_sequences_in_the_budget_and_the_models_context():
    assert sequence_shape(2**17, 128, 1024) == (128, 1024)
    assert sequence_shape(1000, 128, 1024) == (128, 7)  # whole sequences only
    assert sequence_shape(2048, 128, 64) == (64, 32)  # never longer than the model's n_ctx
    with pytest.raises(ValueError, match="--corpus-tokens 100"):
        sequence_shape(100, 128, 1024)


def test_packing_is_bos_then_the_next_tokens_of_the_documents_joined_by_bos():
    """Brute force: every sequence has `length` tokens, BOS first; their bodies, joined, are the start of the stream
    of documents separated by BOS; a piece that continues a document gets no BOS."""
    rng = random.Random(0)
    bos, length = 0, 8
    docs = [[rng.randrange(1, 50) for _ in range(rng.randrange(1, 20))] for _ in range(30)]
    pieces = []
    for d in docs:  # each document in two pieces: only the first starts it
        cut = len(d) // 2
        pieces += [(d[:cut], True), (d[cut:], False)]
    stream = [t for i, d in enumerate(docs) for t in ([bos] if i else []) + d]
    seqs, got = pack_sequences(iter(pieces), bos, length, n_sequences=10)
    assert len(seqs) == 10 and all(len(s) == length and s[0] == bos for s in seqs)
    assert [t for s in seqs for t in s[1:]] == stream[: 10 * (length - 1)]
    assert sum(map(len, seqs)) == 10 * length and got >= 10 * (length - 1)

    consumed = []

    def tracked():
        for p in pieces:
            consumed.append(p)
            yield p

    pack_sequences(tracked(), bos, length, n_sequences=2)
    assert len(consumed) < len(pieces)  # read only as far as it needs (a dataset is streamed)

    short, got = pack_sequences(iter(pieces[:2]), bos, length, n_sequences=10)
    assert len(short) == len(docs[0]) // (length - 1) and got == len(docs[0])  # the text ran out: fewer sequences
