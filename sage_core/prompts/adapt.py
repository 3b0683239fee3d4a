"""Fit a task's vocabulary to a tokenizer: keep the words it spells as one token in context, say what was dropped.

A published tokenizer spells most task words as one token with their leading space, but not all (GPT-2 splits some
names at the start of a sentence, and some years after some centuries; a sentencepiece tokenizer that splits numbers
digit by digit cannot pose greater-than at all). The task's own sampler draws probe prompts (and their
counterfactuals); every word that is not one token where it stands is implicated, and words are dropped greedily, the
one failing in the largest share of its probes first, until no probe fails. A word that fails only beside some others
(a year after one century) is thus dropped only where dropping its partner costs more. The task runs while each word
list keeps `MIN_WORDS` words and each answer word (a pronoun, a verb form) stays one token; otherwise it is skipped with
a one-line reason.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from sage_core.prompts.task import (
    Assignment,
    DatasetConfig,
    PromptTooLong,
    Task,
    TaskError,
    generate_prompts,
    prompt_schema,
    render_spans,
    token_faults,
)

MIN_WORDS = 4  # per word list: two names to pose a prompt, a third for a counterfactual, one more to hold out
N_PROBES = 1500  # sampled prompts (each with one counterfactual per attribute) a task is probed with

Item = tuple[str, str]  # (vocabulary field, word)


class Adaptation(BaseModel):
    """What fitting a task to a tokenizer kept and dropped; `skipped` says why the task cannot be posed, if so."""

    model_config = ConfigDict(frozen=True)
    task: str
    kept: dict[str, int]  # items left per vocabulary field (a noun's pair is one item)
    removed: dict[str, int] = {}  # items dropped per field
    dropped: dict[str, list[str]]  # the words that were not one token, per field
    skipped: str | None = None

    @property
    def n_dropped(self) -> int:
        return sum(self.removed.values())

    def detail(self) -> str:
        """What fitting did, without the task's name: 'dropped 7 of 16 female (Emma, ...) that ...'."""
        if self.skipped:
            return f"skipped ({self.skipped})"
        if not self.n_dropped:
            return "every word is one token"
        parts = ", ".join(f"{n} of {self.kept[f] + n} {f} ({', '.join(self.dropped[f][:8])}"
                          f"{', ...' if len(self.dropped[f]) > 8 else ''})" for f, n in self.removed.items() if n)
        return f"dropped {parts} that the tokenizer does not spell as one token"

    def summary(self) -> str:
        return f"{self.task}: {self.detail()}"


def item_words(value: Any) -> set[str]:
    """The words a vocabulary item puts into a prompt (a name; a noun's two forms; a number as two digits)."""
    if isinstance(value, int):
        return {f"{value:02d}"}
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return set().union(*(item_words(v) for v in value))
    return set()


class _Encodings:
    """The tokenizer as `token_faults` calls it, each distinct text encoded once per `adapt_task` (a probe's text and
    its answers recur across the probes): ids and offsets are the tokenizer's own, so faults are found as before."""

    _KW = {"add_special_tokens": False, "return_offsets_mapping": True}  # how task._encode calls the tokenizer

    def __init__(self, tokenizer: Any):
        self._tokenizer, self._done = tokenizer, {}

    def __getattr__(self, name: str) -> Any:  # is_fast, bos_token_id, unk_token_id: the tokenizer's, read once
        value = getattr(self._tokenizer, name)
        setattr(self, name, value)
        return value

    def __call__(self, text: str, **kw: Any) -> Any:
        if kw != self._KW:
            return self._tokenizer(text, **kw)
        if text not in self._done:
            enc = self._tokenizer(text, **kw)
            self._done[text] = {"input_ids": enc["input_ids"], "offset_mapping": enc["offset_mapping"]}
        return self._done[text]

    def prefill(self, texts: list[str]) -> None:
        """Encode `texts` in one batch call (the Rust tokenizer does them together, far cheaper than one by one)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._done))
        if not todo or not getattr(self._tokenizer, "is_fast", False):
            return  # a slow tokenizer fails in `token_faults`, in order, with its own message
        try:
            # ids and offsets only: HF builds every other field it returns, text by text, in Python
            enc = self._tokenizer(todo, **self._KW, return_attention_mask=False, return_token_type_ids=False)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
        except Exception:  # noqa: BLE001 - no batch API: each text is encoded on its own when asked for
            return
        if len(ids) == len(offsets) == len(todo):
            for t, i, o in zip(todo, ids, offsets, strict=True):
                self._done[t] = {"input_ids": i, "offset_mapping": o}


def _field_words(task: Task, field: str) -> set[str]:
    value = getattr(task, field)
    return set(value.values()) if isinstance(value, dict) else item_words(value)


def _key(a: Assignment) -> tuple:
    # the whole assignment: every task method is a function of it, so equal keys give equal probes
    return a.template, tuple(a.slots.items()), tuple(a.attrs.items()), tuple(a.roles.items())


def _texts(task: Task, a: Assignment) -> list[str]:
    """The texts `token_faults` encodes for `a`: the prompt, and the prompt followed by each answer."""
    text = render_spans(task.templates[a.template], a.slots)[0]
    return [text, *(text + task.answer_prefix + w for w in task.answers(a))]


def _answer_items(task: Task) -> Any:
    """`task.answer_items`, remembered per word where the task keeps `Task`'s own (which reads only the word)."""
    if type(task).answer_items is not Task.answer_items:
        return task.answer_items
    done: dict[str, set[Item]] = {}

    def items(a: Assignment, word: str) -> set[Item]:
        if word not in done:
            done[word] = task.answer_items(a, word)
        return set(done[word])  # a copy: the caller may change it

    return items


def _implicated(task: Task, a: Assignment, tokenizer: Any, words: dict[str, set[str]], answer_items: Any,
                ) -> tuple[list[Item], set[Item]]:
    """Every item the probe `a` uses, and those of them that are not one token there (every failing slot, not only
    the first: a year split together with its century implicates both). `words`: each field's words."""
    used = [(f, a.slots[s]) for s, fields in task.slot_fields.items() if s in a.slots for f in fields
            if a.slots[s] in words[f]]
    used += [x for w in task.answers(a) for x in answer_items(a, w)]
    bad: set[Item] = set()
    for fault in token_faults(task, a, tokenizer):
        if fault.slot is None:
            bad |= set(answer_items(a, fault.word))
        else:
            bad |= {(f, fault.word) for f in task.slot_fields.get(fault.slot, ()) if fault.word in words[f]}
    return used, bad


def _drop_order(probes: list[tuple[list[Item], set[Item]]]) -> list[Item]:
    """Items to drop, greedily: the one failing in the largest share of the probes that use it, until every failing
    probe has lost one of its implicated items (ties broken by name: the same drops on every machine)."""
    uses = Counter(x for used, _ in probes for x in set(used))
    open_faults = [bad for _, bad in probes if bad]
    dropped: list[Item] = []
    while open_faults:
        count = Counter(x for bad in open_faults for x in bad)
        worst = max(count, key=lambda x: (count[x] / uses[x], count[x], x))
        dropped.append(worst)
        open_faults = [bad for bad in open_faults if worst not in bad]
    return dropped


def _field_sets(task: Task) -> dict[str, set[str]]:
    """Each vocabulary field's words (every field a slot or the answer draws from): once per task, not per probe."""
    fields = {f for fs in task.slot_fields.values() for f in fs} | {task.answer_field} - {None}
    return {f: _field_words(task, f) for f in fields}


def _probes(task: Task, tokenizer: Any, n_probes: int, seed: int) -> list[tuple[list[Item], set[Item]]]:
    """`_implicated` of every probe, in draw order: each prompt with one counterfactual per attribute."""
    rng = random.Random(f"adapt:{task.name}:{seed}")
    draws: list[Assignment] = []
    failed: Exception | None = None
    try:  # sampling reads only `rng`, so all draws come first; a failed draw is raised where it stood, below
        for _ in range(n_probes):
            a = task.sample(rng)
            draws.append(a)
            for spec in task.attributes:
                draws.append(task.counterfactual(a, spec.name, rng))
    except Exception as e:  # noqa: BLE001 - re-raised after the probes drawn before it, as when interleaved
        failed = e
    words, tok, answer_items = _field_sets(task), _Encodings(tokenizer), _answer_items(task)
    texts: list[str] = []
    for a in {_key(a): a for a in draws}.values():
        try:
            texts += _texts(task, a)
        except Exception:  # noqa: BLE001 - that probe raises below, in its turn
            break
    tok.prefill(texts)
    seen: dict[tuple, tuple[list[Item], set[Item]]] = {}
    probes = []
    for a in draws:  # in draw order: a tokenizer that fails, fails on the same probe as one by one
        k = _key(a)
        if k not in seen:
            seen[k] = _implicated(task, a, tok, words, answer_items)
        probes.append(seen[k])
    if failed is not None:
        raise failed
    return probes


def adapt_task(task: Task, tokenizer: Any, n_probes: int = N_PROBES, seed: int = 0) -> tuple[Task | None, Adaptation]:
    """The task with only the words `tokenizer` spells as one token in context (None when it cannot be posed), and
    what was kept and dropped."""
    probes = _probes(task, tokenizer, n_probes, seed)
    words = _field_sets(task)
    dropped: dict[str, set[str]] = {}
    for field, word in _drop_order(probes):
        # a word that fails in a slot fails in every field that slot draws from (a name both male and female)
        for fields in task.slot_fields.values():
            if field in fields:
                for f in fields:
                    if word in words[f]:
                        dropped.setdefault(f, set()).add(word)
        dropped.setdefault(field, set()).add(word)
    update, kept, removed, skipped = {}, {}, {}, None
    for field in sorted(words):
        value, gone = getattr(task, field), dropped.get(field, set())
        if isinstance(value, dict):  # answer words the task cannot do without
            kept[field] = len(value) - len(gone)
            if gone and skipped is None:
                skipped = f"its answer word(s) {sorted(gone)} are not one token for this tokenizer"
            continue
        left = [v for v in value if not item_words(v) & gone]
        update[field], kept[field], removed[field] = left, len(left), len(value) - len(left)
        if len(left) < MIN_WORDS and skipped is None:
            skipped = (f"only {len(left)} of its {len(value)} {field} are one token for this tokenizer (it needs "
                       f"{MIN_WORDS})")
    report = Adaptation(task=task.name, kept=kept, removed=removed,
                        dropped={f: sorted(w) for f, w in sorted(dropped.items())}, skipped=skipped)
    if skipped:
        return None, report
    return task.model_copy(update=update), report


def pose_task(task: Task, cfg: DatasetConfig, tokenizer: Any, max_len: int | None = None,
              ) -> tuple[pl.DataFrame, Adaptation]:
    """The task's prompt table on `tokenizer` after fitting its vocabulary, and what fitting it did. A task that cannot
    be posed (too few words left, an answer that splits, splits that cannot be filled) gives an empty table and says
    why in `Adaptation.skipped`; a prompt longer than the model's context is a setting to change and raises."""
    report = Adaptation(task=task.name, kept={}, dropped={})
    try:
        adapted, report = adapt_task(task, tokenizer, seed=cfg.seed)
        if adapted is not None:
            return generate_prompts(adapted, cfg, tokenizer, max_len), report
    except PromptTooLong:
        raise
    except TaskError as e:  # a tokenizer without offsets or BOS, a vocabulary too thin to draw from
        report = report.model_copy(update={"skipped": " ".join(str(e).split())})
    return pl.DataFrame(schema=prompt_schema(task)), report
