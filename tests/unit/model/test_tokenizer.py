from __future__ import annotations


def test_round_trip_and_years(tokenizer):
    text = "When Mary and John went to the store , John gave a drink to Mary"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids
    year = tokenizer("from the year 1732", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(year[-2:]) == ["17", "32"]


def test_saved_and_reloaded_tokenizer_is_identical(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    s = "The keys near the cabinet are"
    assert back(s)["input_ids"] == tokenizer(s)["input_ids"]
    assert back.bos_token == tokenizer.bos_token and back.pad_token_id == tokenizer.pad_token_id


def test_vocabulary_is_deterministic():
    from sage_core.model.tokenizer import build_tokenizer

    a, b = build_tokenizer(["b", "a", "c"]), build_tokenizer(["c", "a", "b"])
    assert a.get_vocab() == b.get_vocab()
