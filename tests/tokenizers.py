"""Real tokenizer families for tests, built offline: GPT-2's byte-level BPE from its vocabulary and merges vendored in
tests/data/gpt2 (see the README there), and a sentencepiece-style tokenizer (Metaspace `▁`, as Llama and Gemma) trained
here on the lines a test passes. Nothing is fetched.

Imported as `tests.tokenizers`; its own `tokenizers` below is the Hugging Face library (absolute imports)."""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

GPT2_DIR = Path(__file__).parent / "data" / "gpt2"
GPT2_VOCAB = GPT2_DIR / "encoder.json"  # GPT-2's vocab.json
GPT2_MERGES = GPT2_DIR / "vocab.bpe"  # GPT-2's merges.txt
GPT2_SPECIAL = "<|endoftext|>"  # GPT-2's bos, eos and unk (id 50256); it has no pad
GPT2_MAX_LENGTH = 1024  # n_positions, the real tokenizer's model_max_length


@lru_cache(maxsize=1)
def _gpt2_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    vocab = json.loads(GPT2_VOCAB.read_text(encoding="utf-8"))
    lines = GPT2_MERGES.read_text(encoding="utf-8").split("\n")
    merges = tuple(tuple(line.split(" ")) for line in lines[1:] if line)  # the first line is '#version: 0.2'
    return vocab, merges


def gpt2_tokenizer():
    """GPT-2's tokenizer (`GPT2TokenizerFast`) from the vendored files: the same ids, offsets and special token as
    `AutoTokenizer.from_pretrained("gpt2")`. A new object each call (a test may change it)."""
    from transformers import GPT2TokenizerFast

    vocab, merges = _gpt2_vocab_and_merges()
    # vocab/merges, not vocab_file/merges_file: transformers 5 ignores the file arguments here (an empty vocabulary)
    return GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges), unk_token=GPT2_SPECIAL, bos_token=GPT2_SPECIAL,
                             eos_token=GPT2_SPECIAL, add_prefix_space=False, model_max_length=GPT2_MAX_LENGTH)


def gpt2_files(dest: str | Path) -> list[Path]:
    """Write the tokenizer files a Hugging Face `gpt2` repo holds (vocab.json, merges.txt, tokenizer.json,
    tokenizer_config.json, special_tokens_map.json) into `dest`, as `save_pretrained` of the real tokenizer writes
    them; returns their paths. For a local HF cache (tests/acceptance/hf_cache.py)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    gpt2_tokenizer().save_pretrained(str(dest))
    # the originals byte for byte (save_pretrained re-serialises them)
    (dest / "vocab.json").write_bytes(GPT2_VOCAB.read_bytes())
    (dest / "merges.txt").write_bytes(GPT2_MERGES.read_bytes())
    if not (dest / "special_tokens_map.json").exists():  # transformers 5 no longer writes it; older ones read it
        (dest / "special_tokens_map.json").write_text(json.dumps(
            {k: GPT2_SPECIAL for k in ("bos_token", "eos_token", "unk_token")}, indent=2) + "\n")
    names = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return [dest / n for n in names]


SP_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3 (Llama's order for the first three)
SP_VOCAB_SIZE = 8000  # an upper bound: on a test's few thousand lines the merges run out first (whole words)


def sentencepiece_tokenizer(lines: Iterable[str], vocab_size: int = SP_VOCAB_SIZE):
    """A sentencepiece-style `PreTrainedTokenizerFast` trained on `lines`: a BPE model (as Llama 2 and Gemma) behind a
    Metaspace `▁` pre-tokenizer that marks the start of the text and every space (prepend_scheme "first", as Llama
    and Gemma), so a word and the space before it are one piece ("▁Mary"); punctuation stays apart from letters (as
    sentencepiece's split by script). bos `<s>`, eos `</s>`, unk `<unk>`, pad `<pad>`; BOS is added only with
    add_special_tokens=True (SAGE passes False and prepends BOS itself). The same lines give the same tokenizer (BPE:
    the Unigram trainer is not deterministic across processes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk, bos, eos, pad = SP_SPECIALS
    tok = Tokenizer(models.BPE(unk_token=unk, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    # every printable ASCII character is a piece, seen in `lines` or not: <unk> is for the rest (Llama falls back to
    # bytes there)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SP_SPECIALS), show_progress=False,
                                  initial_alphabet=sorted(string.ascii_letters + string.digits + string.punctuation))
    tok.train_from_iterator(sorted(lines), trainer=trainer)  # sorted: the order the lines came in is no input
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
                                   clean_up_tokenization_spaces=False)
