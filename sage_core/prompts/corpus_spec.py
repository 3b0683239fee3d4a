"""The text the core metrics are computed on (`--corpus`): its spec, and the packing of its tokens into sequences.

Specs: `builtin` (the built-in background corpus: held-out sentences of the zoo's corpus), `text:PATH` (a UTF-8
file) and `hf:<dataset>[:<split>[:<column>]]` (a Hugging Face dataset, streamed; split `train`, column `text` by
default). Real text (text: and hf:) is cut into sequences of `length` tokens, BOS first, the way SAELens and
SAEBench evaluate: the documents' tokens joined by BOS, one stream, each sequence BOS + the next `length - 1` tokens.

Pure: no files, no network (storage reads the text, a task tokenizes and packs it here).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

BUILTIN = "builtin"
PRETRAINED_DEFAULT = "hf:NeelNanda/pile-10k"  # what published GPT-2 / Pythia SAEs are usually judged on (SAELens)
DEFAULT_TOKENS = 2**17
DEFAULT_CONTEXT = 128  # SAELens / SAEBench evaluate with context length 128
SYNTAX = "builtin, text:PATH or hf:DATASET[:SPLIT[:COLUMN]]"


class CorpusSpec(BaseModel):
    """One `--corpus` value, parsed. `dataset` is a hub name (`NeelNanda/pile-10k`) or a local folder or data file."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["builtin", "text", "hf"]
    path: str = ""
    dataset: str = ""
    split: str = "train"
    column: str = "text"

    @classmethod
    def parse(cls, text: str) -> CorpusSpec:
        """`text` as a spec; a ValueError in one line that shows the syntax otherwise."""
        s = (text or "").strip()
        if s == BUILTIN:
            return cls(kind="builtin")
        kind, sep, rest = s.partition(":")
        if sep and kind == "text":
            if not rest.strip():
                raise ValueError(f"--corpus {text!r}: text: needs a file, e.g. text:notes.txt")
            return cls(kind="text", path=rest.strip())
        if sep and kind == "hf":
            dataset, _, tail = rest.partition(":")
            split, _, column = tail.partition(":")
            if not dataset.strip() or ":" in column:
                raise ValueError(f"--corpus {text!r}: give hf:DATASET[:SPLIT[:COLUMN]], e.g. hf:NeelNanda/pile-10k")
            return cls(kind="hf", dataset=dataset.strip(), split=split.strip() or "train",
                       column=column.strip() or "text")
        raise ValueError(f"--corpus {text!r}: give {SYNTAX}")

    def __str__(self) -> str:
        if self.kind == "builtin":
            return BUILTIN
        if self.kind == "text":
            return f"text:{self.path}"
        return f"hf:{self.dataset}:{self.split}:{self.column}"

    @property
    def real_text(self) -> bool:
        """Text read from outside (a file, a dataset), cut into fixed-length sequences; not the built-in sentences."""
        return self.kind != "builtin"


def default_spec(pretrained: str | None) -> str:
    """The corpus when none is given: the built-in one for the built-in model, the usual one for a published model."""
    return BUILTIN if pretrained is None else PRETRAINED_DEFAULT


class CorpusPlan(BaseModel):
    """What a prepared real-text corpus holds; its content decides the corpus's key (`content`: the file's hash or
    the dataset's revision, `tokenizer`: the tokenizer's hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: CorpusSpec
    length: int
    n_sequences: int
    content: str
    tokenizer: str

    @property
    def n_tokens(self) -> int:
        return self.length * self.n_sequences


def sequence_shape(n_tokens: int, context: int, n_ctx: int) -> tuple[int, int]:
    """(length, number of sequences) for a budget of `n_tokens`: sequences of `context` tokens, or the model's
    `n_ctx` if shorter; as many whole ones as fit in the budget (a ValueError if not even one)."""
    length = min(context, n_ctx)
    if length < 2:
        raise ValueError(f"sequences of {length} token(s) hold no next-token prediction; the model's n_ctx is {n_ctx}")
    if n_tokens < length:
        raise ValueError(f"--corpus-tokens {n_tokens} is less than one sequence of {length} tokens; give at least "
                         f"{length}")
    return length, n_tokens // length


def pack_sequences(pieces: Iterable[tuple[Sequence[int], bool]], bos: int, length: int,
                   n_sequences: int) -> tuple[list[list[int]], int]:
    """The first `n_sequences` sequences of `length` tokens (BOS + `length - 1` of the stream) from `pieces`: (token
    ids, starts a new document). A new document after the first is preceded by BOS in the stream (SAELens' packing).
    Reads `pieces` only as far as it needs. Returns (sequences, tokens the stream held): fewer sequences than asked
    when the text runs out."""
    body = length - 1
    need = body * n_sequences
    stream: list[int] = []
    for tokens, new_document in pieces:
        if new_document and stream:
            stream.append(bos)
        stream.extend(tokens)
        if len(stream) >= need:
            break
    n = min(n_sequences, len(stream) // body)
    return [[bos, *stream[i * body:(i + 1) * body]] for i in range(n)], len(stream)


def describe(spec: CorpusSpec | str, n_sequences: int, n_tokens: int, length: int | None = None) -> dict:
    """How the report and the CLI name a corpus: its spec, how many tokens and sequences the core metrics read."""
    return {"spec": str(spec), "tokens": int(n_tokens), "sequences": int(n_sequences),
            "length": None if length is None else int(length)}

