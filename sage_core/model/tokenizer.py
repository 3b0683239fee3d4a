"""The built-in word-level tokenizer (HF `tokenizers`), wrapped as a `PreTrainedTokenizerFast`.

Words are split on whitespace and punctuation, and digit runs in pairs, so "1732" is the two tokens "17", "32" (as in
GPT-2, the century and the year are separate tokens). The tokenizer is built in memory here; `storage.zoo` writes it
to disk, and everything downstream (transformer_lens included) uses the copy reloaded from there.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, PAD, UNK = "<|bos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = (BOS, PAD, UNK)


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `words` (sorted, so the id assignment is deterministic) plus BOS, PAD, UNK."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words) - set(SPECIAL_TOKENS)):
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
            pre_tokenizers.Punctuation(),
        ]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word tokens with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=BOS, pad_token=PAD, unk_token=UNK, model_max_length=1024
    )
