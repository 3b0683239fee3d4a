"""The task engine: typed task definitions, prompt generation, counterfactual pairs and the train/test split.

A task is a pydantic model (templates + vocabularies) with four small methods: how to sample an assignment of
attribute values, which words fill a template's slots, the answer rule, and one counterfactual generator per
attribute. Everything else — tokenisation with role positions, pairing, splitting, validation — lives here, so adding a
task touches no pipeline code.

Prompt-table columns (one row per prompt; counterfactual rows point at their clean row):
    prompt_id, task, split, template, text, tokens (BOS first), answer_token, cf_answer_token,
    attr_<name> (one per attribute), pos_<role> (one per role), pair_of, pair_attr.
`answer_token` is the prompt's own correct next token and `cf_answer_token` its own competing answer (the answer a
model that got the attribute wrong would give). For a pair (x, x'), the logit difference used downstream is
LD(x) = logit(answer(x)) - logit(target), target = answer(x') if it differs from answer(x), else cf_answer(x) (see
`pair_target_token`).
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

SLOT_RE = re.compile(r"\{([A-Z_0-9]+)\}")
WORD_RE = re.compile(r"\w+|[^\w\s]")  # a word or one punctuation mark, as the built-in tokenizer splits text


class TaskError(ValueError):
    """A task definition or its tokenisation is unusable; the message says what to change."""


class PairFault(TaskError):
    """A counterfactual the tokenizer spells with another length or other role positions: draw another."""


class PromptTooLong(TaskError):
    """A prompt exceeds the model's context: a setting to change, never a task to skip."""


class AttributeSpec(BaseModel):
    """One task attribute. `swaps_roles` names two roles whose positions the counterfactual exchanges (IOI's Pos)."""

    model_config = ConfigDict(frozen=True)
    name: str
    description: str = ""
    swaps_roles: tuple[str, str] | None = None


class Assignment(BaseModel):
    """A prompt before tokenisation: template index, slot fillers and attribute values."""

    model_config = ConfigDict(frozen=True)
    template: int
    slots: dict[str, str]
    attrs: dict[str, str]
    roles: dict[str, str] = Field(description="role name -> slot name ('END' is the last token)")


class Task(BaseModel, ABC):
    """Base of every task. Subclasses set `name`, `attributes`, `roles` and implement the four methods below."""

    model_config = ConfigDict(frozen=True)
    name: ClassVar[str]
    attributes: ClassVar[tuple[AttributeSpec, ...]]
    roles: ClassVar[tuple[str, ...]]

    # which vocabulary field fills each slot (what `sage_core.prompts.adapt` drops a word from); how an answer follows
    # the prompt (a space before a word; nothing after a number's first digits)
    slot_fields: ClassVar[dict[str, tuple[str, ...]]] = {}
    answer_field: ClassVar[str | None] = None
    answer_prefix: ClassVar[str] = " "

    templates: list[str]
    test_fraction: float = Field(0.25, ge=0.05, le=0.5, description="share of attribute-value combinations held out")

    # -- what a task defines -------------------------------------------------------------------------------------
    @abstractmethod
    def sample(self, rng: random.Random) -> Assignment: ...

    @abstractmethod
    def answers(self, a: Assignment) -> tuple[str, str]:
        """(correct next word, competing next word)."""

    @abstractmethod
    def counterfactual(self, a: Assignment, attribute: str, rng: random.Random) -> Assignment:
        """Same template, only `attribute` changed."""

    @abstractmethod
    def split_key(self, a: Assignment) -> tuple[str, ...]:
        """The attribute-value combination that decides train/test membership."""

    def answer_items(self, a: Assignment, word: str) -> set[tuple[str, str]]:  # noqa: ARG002 - subclasses read `a`
        """The vocabulary items to blame when the answer `word` of prompt `a` is not one token."""
        field = self.answer_field
        if field is None:
            return set()
        value = getattr(self, field)
        words = set(value.values()) if isinstance(value, dict) else {w for v in value for w in _flatten_words(v)}
        return {(field, word)} if word in words else set()

    def continuation(self, a: Assignment, rng: random.Random) -> str:  # noqa: ARG002 - subclasses may draw
        """The next word in training text; by default the correct answer."""
        return self.answers(a)[0]

    # -- shared machinery ----------------------------------------------------------------------------------------
    def vocabulary(self) -> set[str]:
        """Every word the task can produce (templates, fillers, answers) — the tokenizer must know each one."""
        words: set[str] = set()
        for t in self.templates:
            words.update(WORD_RE.findall(SLOT_RE.sub(" ", t)))
        for field in type(self).model_fields:
            value = getattr(self, field)
            if isinstance(value, dict):
                for v in value.values():
                    words.update(_flatten_words(v))
            elif isinstance(value, list) and field != "templates":
                words.update(_flatten_words(value))
        return words

    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def attribute(self, name: str) -> AttributeSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise TaskError(f"task {self.name!r} has no attribute {name!r}; choose one of {self.attribute_names()}")

    def split_of(self, a: Assignment, seed: int) -> str:
        return "test" if stable_digest(self.name, str(seed), *self.split_key(a)) < self.test_fraction else "train"

    def render(self, a: Assignment) -> str:
        return render_spans(self.templates[a.template], a.slots)[0]


def stable_digest(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts` (not Python's salted hash): same split on every machine."""
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "big") / 2**64


def _flatten_words(v: Any) -> set[str]:
    if isinstance(v, str):
        return set(v.split())
    if isinstance(v, list | tuple):
        out: set[str] = set()
        for x in v:
            out |= _flatten_words(x)
        return out
    if isinstance(v, dict):
        return _flatten_words(list(v.values())) | _flatten_words(list(v.keys()))
    return set()


# -- tokenisation ------------------------------------------------------------------------------------------------
class Tokenized(BaseModel):
    text: str
    tokens: list[int]
    slot_pos: dict[str, int]
    answer_token: int
    cf_answer_token: int


class TokenFault(TaskError):
    """One word of a prompt is not one token in context: `slot` names where (None for an answer), `word` what."""

    def __init__(self, message: str, slot: str | None, word: str):
        super().__init__(message)
        self.slot, self.word = slot, word


def render_spans(template: str, slots: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The prompt's text and each slot's character span in it."""
    text, spans = "", {}
    for i, piece in enumerate(SLOT_RE.split(template)):  # literal, slot, literal, slot, ...
        if i % 2 == 0:
            text += piece
        else:
            spans[piece] = (len(text), len(text) + len(slots[piece]))
            text += slots[piece]
    return text, spans


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise TaskError("SAGE finds role positions from token offsets, which only a fast (Rust) Hugging Face "
                        "tokenizer gives; load the model's tokenizer with use_fast=True")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]


def word_token(text: str, offsets: list[tuple[int, int]], start: int, end: int) -> int | None:
    """The index of the one token that spells text[start:end] (a space or `▁` before the word may belong to it, as
    in byte-level BPE and sentencepiece), or None when the word is split or shares a token with other characters."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if len(hits) != 1:
        return None
    a, b = offsets[hits[0]]
    return hits[0] if b <= end and not text[a:start].strip() else None


def _tokenize(task: Task, a: Assignment, tokenizer: Any) -> tuple[Tokenized | None, list[TokenFault]]:
    text, spans = render_spans(task.templates[a.template], a.slots)
    ids, offsets = _encode(tokenizer, text)
    unk = getattr(tokenizer, "unk_token_id", None)
    faults: list[TokenFault] = []
    slot_pos: dict[str, int] = {}
    for slot, (start, end) in spans.items():
        i = word_token(text, offsets, start, end)
        if i is None or ids[i] == unk:
            why = "does not know" if i is not None else "does not spell as one token"
            faults.append(TokenFault(f"task {task.name!r}: the tokenizer {why} {a.slots[slot]!r} (slot {slot}) in "
                                     f"{text!r}; drop that word from the task for this tokenizer", slot, a.slots[slot]))
        else:
            slot_pos[slot] = i + 1  # +1 for BOS
    answer_ids = []
    for word in task.answers(a):
        ext, _ = _encode(tokenizer, text + task.answer_prefix + word)
        if len(ext) != len(ids) + 1 or ext[: len(ids)] != ids or ext[-1] == unk:
            faults.append(TokenFault(f"task {task.name!r}: answer {word!r} is not one token after {text!r} for this "
                                     "tokenizer; drop that word from the task for this tokenizer", None, word))
        else:
            answer_ids.append(ext[-1])
    if faults:
        return None, faults
    bos = tokenizer.bos_token_id
    if bos is None:
        raise TaskError("the tokenizer has no bos_token; SAGE prompts start with BOS")
    return Tokenized(text=text, tokens=[bos, *ids], slot_pos=slot_pos, answer_token=answer_ids[0],
                     cf_answer_token=answer_ids[1]), []


def token_faults(task: Task, a: Assignment, tokenizer: Any) -> list[TokenFault]:
    """Every word of the prompt `a` (slot fillers and answers) that is not one token where it stands."""
    return _tokenize(task, a, tokenizer)[1]


def tokenize_assignment(task: Task, a: Assignment, tokenizer: Any) -> Tokenized:
    """Tokenise with BOS first and find each slot's token position from the tokenizer's character offsets.

    Works for any fast HF tokenizer (word-level, byte-level BPE, sentencepiece): a slot's role is the token whose
    span covers the slot's word. A filler that is not exactly one token in context, an unknown word, or an answer that
    is not one token after the prompt raises `TokenFault` naming the word (SAGE's roles are single positions).
    """
    tok, faults = _tokenize(task, a, tokenizer)
    if faults:
        raise faults[0]
    return tok


# -- dataset generation --------------------------------------------------------------------------------------------
class DatasetConfig(BaseModel):
    """How many prompts of one task to make. Deterministic under `seed`."""

    model_config = ConfigDict(frozen=True)
    task: str
    n_train: int = Field(512, ge=1)
    n_test: int = Field(256, ge=1)
    seed: int = 0
    counterfactuals: bool = True


def role_positions(a: Assignment, tok: Tokenized) -> dict[str, int]:
    out = {}
    for role, slot in a.roles.items():
        out[role] = len(tok.tokens) - 1 if slot == "END" else tok.slot_pos[slot]
    return out


def check_pair(task: Task, attribute: str, a: Assignment, b: Assignment, ta: Tokenized, tb: Tokenized) -> None:
    """Enforce the counterfactual contract: same length, same role positions, only `attribute` changed."""
    if len(ta.tokens) != len(tb.tokens):
        raise PairFault(f"task {task.name!r}: counterfactual for {attribute!r} changes the token length")
    changed = {k for k in a.attrs if a.attrs[k] != b.attrs[k]}
    if changed != {attribute}:
        raise TaskError(f"task {task.name!r}: counterfactual for {attribute!r} changes attributes {sorted(changed)}")
    pa, pb = role_positions(a, ta), role_positions(b, tb)
    swap = task.attribute(attribute).swaps_roles
    if swap:
        r1, r2 = swap
        pb = {**pb, r1: pb[r2], r2: pb[r1]}
    if pa != pb:
        raise PairFault(f"task {task.name!r}: counterfactual for {attribute!r} moves role positions {pa} -> {pb}")


def generate_prompts(task: Task, cfg: DatasetConfig, tokenizer: Any, max_len: int | None = None) -> pl.DataFrame:
    """Sample `n_train` + `n_test` clean prompts (with one counterfactual per attribute each) as a prompt table.

    Raises TaskError if a prompt would exceed `max_len` tokens (the model's n_ctx) or the split cannot be filled.
    """
    rng = random.Random(f"{task.name}:{cfg.seed}")
    want = {"train": cfg.n_train, "test": cfg.n_test}
    have = {"train": 0, "test": 0}
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    attempts = 0
    limit = 50 * (cfg.n_train + cfg.n_test) + 1000
    rejected, last_fault = 0, None
    while have["train"] < want["train"] or have["test"] < want["test"]:
        attempts += 1
        if attempts > limit:
            why = f" ({rejected} rejected, the last because {last_fault})" if rejected else ""
            raise TaskError(
                f"task {task.name!r}: could only make {have} distinct prompts of {want}{why}; ask for fewer prompts"
            )
        a = task.sample(rng)
        split = task.split_of(a, cfg.seed)
        text = task.render(a)
        if have[split] >= want[split] or text in seen:
            continue
        try:  # a word the tokenizer splits only beside certain others (a year after some centuries) is rare here:
            # `adapt_task` dropped the words that fail; such a prompt is not made, and counted
            tok = tokenize_assignment(task, a, tokenizer)
            cfs = [_counterfactual(task, a, spec.name, tok, tokenizer, rng)
                   for spec in (task.attributes if cfg.counterfactuals else ())]
        except (TokenFault, PairFault) as e:
            rejected, last_fault = rejected + 1, e
            seen.add(text)  # tried: never tokenised again
            continue
        seen.add(text)
        have[split] += 1
        if max_len is not None and len(tok.tokens) > max_len:
            raise PromptTooLong(
                f"task {task.name!r}: prompt of {len(tok.tokens)} tokens exceeds the model's n_ctx={max_len}; "
                f"shorten the templates or raise n_ctx"
            )
        clean_id = f"{task.name}-{split}-{have[split] - 1:06d}"
        rows.append(_row(task, clean_id, split, a, tok, None, None))
        for spec, (b, tb) in zip(task.attributes if cfg.counterfactuals else (), cfs, strict=True):
            rows.append(_row(task, f"{clean_id}-cf-{spec.name}", split, b, tb, clean_id, spec.name))
    return pl.DataFrame(rows, schema=prompt_schema(task), orient="row")


def _counterfactual(task: Task, a: Assignment, attribute: str, ta: Tokenized, tokenizer: Any,
                    rng: random.Random, tries: int = 20) -> tuple[Assignment, Tokenized]:
    """A counterfactual of `a` for `attribute` that the tokenizer spells (another draw where one is not)."""
    fault = None
    for _ in range(tries):
        b = task.counterfactual(a, attribute, rng)
        try:
            tb = tokenize_assignment(task, b, tokenizer)
            check_pair(task, attribute, a, b, ta, tb)
        except (TokenFault, PairFault) as e:
            fault = e
            continue
        return b, tb
    raise fault


def _row(task: Task, pid: str, split: str, a: Assignment, tok: Tokenized, pair_of: str | None, pair_attr: str | None):
    pos = role_positions(a, tok)
    row: dict[str, Any] = {
        "prompt_id": pid,
        "task": task.name,
        "split": split,
        "template": a.template,
        "text": tok.text,
        "tokens": tok.tokens,
        "answer_token": tok.answer_token,
        "cf_answer_token": tok.cf_answer_token,
    }
    for spec in task.attributes:
        row[f"attr_{spec.name}"] = a.attrs[spec.name]
    for role in task.roles:
        row[f"pos_{role}"] = pos[role]
    row["pair_of"] = pair_of
    row["pair_attr"] = pair_attr
    return row


def prompt_schema(task: Task) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "prompt_id": pl.String,
        "task": pl.String,
        "split": pl.String,
        "template": pl.Int32,
        "text": pl.String,
        "tokens": pl.List(pl.Int32),
        "answer_token": pl.Int32,
        "cf_answer_token": pl.Int32,
    }
    schema.update({f"attr_{a.name}": pl.String for a in task.attributes})
    schema.update({f"pos_{r}": pl.Int32 for r in task.roles})
    schema.update({"pair_of": pl.String, "pair_attr": pl.String})
    return schema


def pair_target_token(clean_answer: int, clean_competing: int, cf_answer: int) -> int:
    """The token LD(x) compares the clean answer against for a pair (x, x').

    The answer x' would have; where x' keeps x's answer (IOI's S and Pos, an attractor's number), x's competing answer:
    that is where an intervention carrying the attribute from x' pushes the model.
    """
    return cf_answer if cf_answer != clean_answer else clean_competing
