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


class TaskError(ValueError):
    """A task definition or its tokenisation is unusable; the message says what to change."""


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

    def continuation(self, a: Assignment, rng: random.Random) -> str:  # noqa: ARG002 - subclasses may draw
        """The next word in training text; by default the correct answer."""
        return self.answers(a)[0]

    # -- shared machinery ----------------------------------------------------------------------------------------
    def vocabulary(self) -> set[str]:
        """Every word the task can produce (templates, fillers, answers) — the tokenizer must know each one."""
        words: set[str] = set()
        for t in self.templates:
            words.update(w for w in SLOT_RE.sub(" ", t).split())
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
        return SLOT_RE.sub(lambda m: a.slots[m.group(1)], self.templates[a.template])


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


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _last_token(tokenizer: Any, text: str) -> int:
    return tokenizer(text, add_special_tokens=False)["input_ids"][-1]


def tokenize_assignment(task: Task, a: Assignment, tokenizer: Any) -> Tokenized:
    """Tokenise with BOS first and find each slot's token position.

    Works for any HF tokenizer: a slot's position is found by tokenising the prefix before and after it, and a filler or
    answer that is not exactly one token is an error (SAGE's roles are single positions).
    """
    template = task.templates[a.template]
    text = ""
    slot_pos: dict[str, int] = {}
    pieces = SLOT_RE.split(template)  # literal, slot, literal, slot, ...
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            text += piece
            continue
        before = _n_tokens(tokenizer, text)
        text += a.slots[piece]
        after = _n_tokens(tokenizer, text)
        if after - before != 1:
            raise TaskError(
                f"task {task.name!r}: the tokenizer splits {a.slots[piece]!r} (slot {piece}) into {after - before} "
                f"tokens; use single-token vocabulary for this tokenizer"
            )
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and _last_token(tokenizer, text) == unk:
            raise TaskError(
                f"task {task.name!r}: the tokenizer does not know {a.slots[piece]!r} (slot {piece}); "
                f"add it to the tokenizer's vocabulary or drop it from the task"
            )
        slot_pos[piece] = before + 1  # +1 for BOS
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer, competing = task.answers(a)
    ans_ids = []
    for word in (answer, competing):
        ext = tokenizer(text + " " + word, add_special_tokens=False)["input_ids"]
        if len(ext) != len(ids) + 1 or ext[: len(ids)] != ids:
            raise TaskError(
                f"task {task.name!r}: answer {word!r} is not a single token after the prompt for this tokenizer; "
                f"use single-token answers"
            )
        ans_ids.append(ext[-1])
    bos = tokenizer.bos_token_id
    if bos is None:
        raise TaskError("the tokenizer has no bos_token; SAGE prompts start with BOS")
    return Tokenized(
        text=text, tokens=[bos, *ids], slot_pos=slot_pos, answer_token=ans_ids[0], cf_answer_token=ans_ids[1]
    )


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
        raise TaskError(f"task {task.name!r}: counterfactual for {attribute!r} changes the token length")
    changed = {k for k in a.attrs if a.attrs[k] != b.attrs[k]}
    if changed != {attribute}:
        raise TaskError(f"task {task.name!r}: counterfactual for {attribute!r} changes attributes {sorted(changed)}")
    pa, pb = role_positions(a, ta), role_positions(b, tb)
    swap = task.attribute(attribute).swaps_roles
    if swap:
        r1, r2 = swap
        pb = {**pb, r1: pb[r2], r2: pb[r1]}
    if pa != pb:
        raise TaskError(f"task {task.name!r}: counterfactual for {attribute!r} moves role positions {pa} -> {pb}")


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
    while have["train"] < want["train"] or have["test"] < want["test"]:
        attempts += 1
        if attempts > limit:
            raise TaskError(
                f"task {task.name!r}: could only make {have} distinct prompts of {want}; ask for fewer prompts"
            )
        a = task.sample(rng)
        split = task.split_of(a, cfg.seed)
        text = task.render(a)
        if have[split] >= want[split] or text in seen:
            continue
        seen.add(text)
        have[split] += 1
        tok = tokenize_assignment(task, a, tokenizer)
        if max_len is not None and len(tok.tokens) > max_len:
            raise TaskError(
                f"task {task.name!r}: prompt of {len(tok.tokens)} tokens exceeds the model's n_ctx={max_len}; "
                f"shorten the templates or raise n_ctx"
            )
        clean_id = f"{task.name}-{split}-{have[split] - 1:06d}"
        rows.append(_row(task, clean_id, split, a, tok, None, None))
        if not cfg.counterfactuals:
            continue
        for spec in task.attributes:
            b = task.counterfactual(a, spec.name, rng)
            tb = tokenize_assignment(task, b, tokenizer)
            check_pair(task, spec.name, a, b, tok, tb)
            rows.append(_row(task, f"{clean_id}-cf-{spec.name}", split, b, tb, clean_id, spec.name))
    return pl.DataFrame(rows, schema=prompt_schema(task), orient="row")


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
