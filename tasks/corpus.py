"""The text the core metrics are computed on (`--corpus`, `sage_core.prompts.corpus_spec`): the built-in corpus as the
zoo built it, or real text (a file, a Hugging Face dataset) tokenized by the model's own tokenizer into sequences of
fixed length, BOS first, written once in the corpus layout (split "heldout"), so the core metrics and
`section-references` read it unchanged. The prepared corpus's key is its plan (the spec without a file's path, the
sequences' length and number, the text's content hash or revision, the tokenizer's hash) and this code: its
CorpusRef's content hash then keys the core metrics.

Not cached by Prefect: finding the text (a file's hash, a dataset's revision on the hub) is what says whether a
prepared corpus still holds it, so it runs every time; the table itself is written once under its key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl
from prefect import task
from pydantic import BaseModel, ConfigDict

from sage_core.prompts.corpus_spec import CorpusPlan, CorpusSpec, describe, pack_sequences, sequence_shape
from storage import text_corpus as tc
from storage import zoo as zoo_store
from storage.datasets import corpus_ref, read_corpus
from storage.home import SageHome
from storage.refs import CorpusRef, ModelRef
from tasks.common import UNCACHED, log, needs_build, output_key

# a row or block is cut at this many characters per token still wanted: no tokenizer spends more on one token of
# real text, and a 1 MB document is not tokenized whole for the last few tokens of a budget
CHARS_PER_TOKEN = 32


class CoreCorpus(BaseModel):
    """The corpus the core metrics read (`ref`, its first `n_sequences` held-out rows) and how the report names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ref: CorpusRef
    n_sequences: int
    about: dict[str, Any]


def _corpus_name(parameters: dict) -> str:
    return f"corpus {parameters['spec']}"


@task(name="prepare-corpus", task_run_name=_corpus_name, **UNCACHED)
def prepare_corpus(spec: CorpusSpec, n_tokens: int, context: int, model: ModelRef, builtin: CorpusRef,
                   n_builtin: int, home: str) -> CoreCorpus:
    """`builtin`: the zoo's corpus, its first `n_builtin` held-out sentences (as before: the same inputs, the same
    keys downstream). Real text: its first `n_tokens` tokens, in sequences of `context` tokens (at most the model's
    n_ctx); a text too short for them fails in one line that says what to give."""
    h = SageHome(home)
    if not spec.real_text:
        held = read_corpus(h.at(builtin)).filter(pl.col("split") == "heldout")["tokens"].to_list()[:n_builtin]
        return CoreCorpus(ref=builtin, n_sequences=n_builtin,
                          about=describe(spec, len(held), sum(len(s) for s in held)))
    tok_ref = zoo_store.find_tokenizer(h, zoo_store.zoo_name(model))
    length, n_seq = sequence_shape(n_tokens, context, tc.model_context(h, model))
    try:
        src = tc.resolve(spec)
    except tc.Unreachable:
        earlier = tc.find_prepared(h, {"spec": tc.absolute(spec).model_dump(mode="json"), "length": length,
                                       "n_sequences": n_seq, "tokenizer": tok_ref.hash})
        if earlier is None:
            raise
        ref, plan = earlier
        log().warning(f"{spec}: out of reach; the core metrics read the copy SAGE prepared from it earlier "
                      f"(revision {plan.get('content')})")
        return CoreCorpus(ref=ref, n_sequences=n_seq, about={**describe(spec, n_seq, length * n_seq, length),
                                                             "content": f"revision {str(plan.get('content'))[:12]}"})
    plan = CorpusPlan(spec=src.spec, length=length, n_sequences=n_seq, content=src.content, tokenizer=tok_ref.hash)
    # a file's path is not what it holds: the same bytes elsewhere are the same corpus
    keyed = plan.model_copy(update={"spec": plan.spec.model_copy(update={"path": ""})})
    key = output_key("prepare-corpus", {"plan": keyed}, (__name__,))
    if needs_build(h.corpus_dir(key)):
        tok = zoo_store.load_tokenizer(h.at(tok_ref))
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise ValueError(f"the model's tokenizer has no BOS (or EOS) token to begin the sequences of {spec} with")
        need = (length - 1) * n_seq
        seqs, got = pack_sequences(_token_pieces(tok, tc.read_pieces(src), need), bos, length, n_seq)
        if len(seqs) < n_seq:
            fit = (got // (length - 1)) * length
            hint = f"--corpus-tokens {fit}" if fit else "a longer text"
            raise ValueError(f"--corpus {spec}: its text gives {got} tokens, fewer than the {plan.n_tokens} asked for "
                             f"({n_seq} sequences of {length}); give more text, or {hint}")
        texts = tok.batch_decode([s[1:] for s in seqs])
        tc.write_packed(h, key, texts, seqs, meta={"plan": plan.model_dump(mode="json")})
    return CoreCorpus(ref=corpus_ref(h, key), n_sequences=n_seq,
                      about={**describe(src.spec, n_seq, plan.n_tokens, length), "content": _content(src)})


def _content(src: tc.TextSource) -> str:
    """What identifies the text, as the report names it."""
    hub = src.spec.kind == "hf" and not tc.is_local(src.spec.dataset)
    return f"revision {src.content[:12]}" if hub else f"sha256 {src.content[:12]}"


def _token_pieces(tok, pieces: Iterable[tuple[str, bool]], need: int) -> Iterator[tuple[list[int], bool]]:
    """The pieces' token ids (no special tokens), each piece cut to what the budget can still use."""
    seen = 0
    for text, new_document in pieces:
        ids = tok(text[: (need - seen + 1) * CHARS_PER_TOKEN], add_special_tokens=False, verbose=False)["input_ids"]
        seen += len(ids) + (1 if new_document and seen else 0)
        yield ids, new_document
