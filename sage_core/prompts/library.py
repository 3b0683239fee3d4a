"""The built-in task suite and its registry. Each task is data (templates, vocabularies) plus its answer rule.

Vocabularies are chosen so every item is one token for the built-in word-level tokenizer; for a published tokenizer
`sage_core.prompts.adapt` keeps the items it spells as one token in context. Templates read as natural text
(punctuation attached, as in the IOI literature).
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from sage_core.prompts.task import Assignment, AttributeSpec, Task, TaskError, stable_digest

MALE_NAMES = ["John", "James", "Robert", "Michael", "David", "Thomas", "Daniel", "Paul", "Mark", "George",
              "Kevin", "Brian", "Edward", "Jacob", "Peter", "Henry"]
FEMALE_NAMES = ["Mary", "Sarah", "Linda", "Susan", "Karen", "Lisa", "Nancy", "Emma", "Anna", "Laura",
                "Alice", "Rachel", "Julia", "Grace", "Helen", "Kate"]
PLACES = ["store", "garden", "school", "park", "station", "office", "market", "beach", "library", "restaurant"]
OBJECTS = ["drink", "book", "ring", "kiss", "bone", "basketball", "computer", "necklace", "flower", "letter"]
# (singular, plural): both forms are single tokens
NOUNS = [("key", "keys"), ("dog", "dogs"), ("teacher", "teachers"), ("box", "boxes"), ("car", "cars"),
         ("book", "books"), ("bird", "birds"), ("girl", "girls"), ("boy", "boys"), ("cat", "cats"),
         ("table", "tables"), ("window", "windows"), ("doctor", "doctors"), ("chair", "chairs"),
         ("farmer", "farmers"), ("picture", "pictures")]
EVENTS = ["war", "expedition", "drought", "reign", "project", "famine", "strike", "voyage", "siege", "festival"]


def _other(rng: random.Random, pool: list[str], exclude: set[str]) -> str:
    choices = [x for x in pool if x not in exclude]
    if not choices:
        raise TaskError("vocabulary too small to draw a counterfactual value; add more items")
    return rng.choice(choices)


class IOITask(Task):
    """Indirect-object identification: 'When Mary and John went to the store, John gave a drink to' -> Mary."""

    name: ClassVar[str] = "ioi"
    attributes: ClassVar[tuple[AttributeSpec, ...]] = (
        AttributeSpec(name="IO", description="the indirect object's name"),
        AttributeSpec(name="S", description="the subject's name"),
        AttributeSpec(name="Pos", description="ABB (IO first) or BAB (S first)", swaps_roles=("IO", "S1")),
    )
    roles: ClassVar[tuple[str, ...]] = ("IO", "S1", "S2", "END")
    slot_fields: ClassVar[dict[str, tuple[str, ...]]] = {"A": ("names",), "B": ("names",), "C": ("names",),
                                                         "PLACE": ("places",), "OBJECT": ("objects",)}
    answer_field: ClassVar[str | None] = "names"

    templates: list[str] = Field(default_factory=lambda: [
        "When {A} and {B} went to the {PLACE}, {C} gave a {OBJECT} to",
        "Then, {A} and {B} had a lot of fun at the {PLACE}. {C} gave a {OBJECT} to",
        "After {A} and {B} went to the {PLACE}, {C} handed a {OBJECT} to",
        "While {A} and {B} were working at the {PLACE}, {C} gave a {OBJECT} to",
    ])
    names: list[str] = Field(default_factory=lambda: MALE_NAMES + FEMALE_NAMES)
    places: list[str] = Field(default_factory=lambda: list(PLACES))
    objects: list[str] = Field(default_factory=lambda: list(OBJECTS))

    def _make(self, template: int, io: str, s: str, pos: str, place: str, obj: str) -> Assignment:
        a, b = (io, s) if pos == "ABB" else (s, io)
        roles = {"IO": "A" if pos == "ABB" else "B", "S1": "B" if pos == "ABB" else "A", "S2": "C", "END": "END"}
        return Assignment(template=template, slots={"A": a, "B": b, "C": s, "PLACE": place, "OBJECT": obj},
                          attrs={"IO": io, "S": s, "Pos": pos}, roles=roles)

    def sample(self, rng: random.Random) -> Assignment:
        io, s = rng.sample(self.names, 2)
        return self._make(rng.randrange(len(self.templates)), io, s, rng.choice(["ABB", "BAB"]),
                          rng.choice(self.places), rng.choice(self.objects))

    def answers(self, a: Assignment) -> tuple[str, str]:
        return a.attrs["IO"], a.attrs["S"]

    def counterfactual(self, a: Assignment, attribute: str, rng: random.Random) -> Assignment:
        io, s, pos = a.attrs["IO"], a.attrs["S"], a.attrs["Pos"]
        if attribute == "IO":
            io = _other(rng, self.names, {io, s})
        elif attribute == "S":
            s = _other(rng, self.names, {io, s})
        elif attribute == "Pos":
            pos = "BAB" if pos == "ABB" else "ABB"
        else:
            self.attribute(attribute)
        return self._make(a.template, io, s, pos, a.slots["PLACE"], a.slots["OBJECT"])

    def split_key(self, a: Assignment) -> tuple[str, ...]:
        return (a.attrs["IO"], a.attrs["S"])


class GreaterThanTask(Task):
    """Greater-than: 'The war lasted from the year 1732 to the year 17' -> a two-digit year above 32.

    Years are written as four digits and tokenised as century + two digits. The reference answer is YY+1 (the most
    likely continuation in the built-in corpus), the competing answer YY-1 (a year that is not greater).
    """

    name: ClassVar[str] = "greater_than"
    attributes: ClassVar[tuple[AttributeSpec, ...]] = (
        AttributeSpec(name="YY", description="the start year's last two digits"),
        AttributeSpec(name="century", description="the start year's first two digits"),
    )
    roles: ClassVar[tuple[str, ...]] = ("CC", "YY", "END")
    slot_fields: ClassVar[dict[str, tuple[str, ...]]] = {"EVENT": ("events",), "CC": ("centuries",),
                                                         "YY": ("years",), "CC2": ("centuries",)}
    answer_field: ClassVar[str | None] = "years"
    answer_prefix: ClassVar[str] = ""  # the end year's last two digits follow its century directly: "17" + "33"

    templates: list[str] = Field(default_factory=lambda: [
        "The {EVENT} lasted from the year {CC}{YY} to the year {CC2}",
        "The {EVENT} started in the year {CC}{YY} and ended in the year {CC2}",
        "The {EVENT} went on from {CC}{YY} to {CC2}",
    ])
    events: list[str] = Field(default_factory=lambda: list(EVENTS))
    centuries: list[int] = Field(default_factory=lambda: list(range(11, 19)))
    years: list[int] = Field(default_factory=lambda: list(range(10, 90)))

    def _make(self, template: int, cc: int, yy: int, event: str) -> Assignment:
        return Assignment(template=template, slots={"EVENT": event, "CC": f"{cc}", "YY": f"{yy:02d}", "CC2": f"{cc}"},
                          attrs={"YY": f"{yy:02d}", "century": f"{cc}"}, roles={"CC": "CC", "YY": "YY", "END": "END"})

    def sample(self, rng: random.Random) -> Assignment:
        return self._make(rng.randrange(len(self.templates)), rng.choice(self.centuries), rng.choice(self.years),
                          rng.choice(self.events))

    def answers(self, a: Assignment) -> tuple[str, str]:
        yy = int(a.attrs["YY"])
        return f"{yy + 1:02d}", f"{yy - 1:02d}"

    def answer_items(self, a: Assignment, word: str) -> set[tuple[str, str]]:  # noqa: ARG002 - the start year is blamed
        return {("years", a.attrs["YY"])}

    def continuation(self, a: Assignment, rng: random.Random) -> str:
        # end year YY+k with k ~ Geometric(1/2): YY+1 is the mode, every continuation is greater
        k = 1
        while rng.random() < 0.5 and int(a.attrs["YY"]) + k < 99:
            k += 1
        return f"{int(a.attrs['YY']) + k:02d}"

    def counterfactual(self, a: Assignment, attribute: str, rng: random.Random) -> Assignment:
        cc, yy = int(a.attrs["century"]), int(a.attrs["YY"])
        if attribute == "YY":
            # far enough that the two answers are clearly ordered
            far = [y for y in self.years if abs(y - yy) >= 10]
            if not far:
                raise TaskError(f"task {self.name!r}: no year at least 10 from {yy}; keep years farther apart")
            yy = rng.choice(far)
        elif attribute == "century":
            cc = rng.choice([c for c in self.centuries if c != cc])
        else:
            self.attribute(attribute)
        return self._make(a.template, cc, yy, a.slots["EVENT"])

    def split_key(self, a: Assignment) -> tuple[str, ...]:
        return (a.attrs["century"], a.attrs["YY"])

    def vocabulary(self) -> set[str]:
        return super().vocabulary() | {f"{n:02d}" for n in range(100)}


class GenderedPronounTask(Task):
    """Gendered pronoun: 'John went to the park because' -> he."""

    name: ClassVar[str] = "gendered_pronoun"
    attributes: ClassVar[tuple[AttributeSpec, ...]] = (AttributeSpec(name="gender", description="the name's gender"),)
    roles: ClassVar[tuple[str, ...]] = ("NAME", "END")
    slot_fields: ClassVar[dict[str, tuple[str, ...]]] = {"NAME": ("male", "female"), "PLACE": ("places",),
                                                         "OBJECT": ("objects",)}
    answer_field: ClassVar[str | None] = "pronouns"

    templates: list[str] = Field(default_factory=lambda: [
        "{NAME} went to the {PLACE} because",
        "When {NAME} saw the {OBJECT} at the {PLACE},",
        "{NAME} was very tired, so",
        "After {NAME} found the {OBJECT},",
    ])
    male: list[str] = Field(default_factory=lambda: list(MALE_NAMES))
    female: list[str] = Field(default_factory=lambda: list(FEMALE_NAMES))
    places: list[str] = Field(default_factory=lambda: list(PLACES))
    objects: list[str] = Field(default_factory=lambda: list(OBJECTS))
    pronouns: dict[str, str] = Field(default_factory=lambda: {"male": "he", "female": "she"})

    def _make(self, template: int, name: str, gender: str, place: str, obj: str) -> Assignment:
        return Assignment(template=template, slots={"NAME": name, "PLACE": place, "OBJECT": obj},
                          attrs={"gender": gender}, roles={"NAME": "NAME", "END": "END"})

    def sample(self, rng: random.Random) -> Assignment:
        gender = rng.choice(["male", "female"])
        name = rng.choice(self.male if gender == "male" else self.female)
        return self._make(rng.randrange(len(self.templates)), name, gender, rng.choice(self.places),
                          rng.choice(self.objects))

    def answers(self, a: Assignment) -> tuple[str, str]:
        other = "female" if a.attrs["gender"] == "male" else "male"
        return self.pronouns[a.attrs["gender"]], self.pronouns[other]

    def counterfactual(self, a: Assignment, attribute: str, rng: random.Random) -> Assignment:
        self.attribute(attribute)
        gender = "female" if a.attrs["gender"] == "male" else "male"
        name = rng.choice(self.male if gender == "male" else self.female)
        return self._make(a.template, name, gender, a.slots["PLACE"], a.slots["OBJECT"])

    def split_key(self, a: Assignment) -> tuple[str, ...]:
        return (a.slots["NAME"], str(a.template))

    def split_of(self, a: Assignment, seed: int) -> str:
        # each name has exactly one held-out template, so every name is still trained with the others
        held_out = int(stable_digest(self.name, str(seed), a.slots["NAME"]) * len(self.templates))
        return "test" if a.template == held_out else "train"


class SubjectVerbAgreementTask(Task):
    """Subject-verb agreement across an attractor: 'The keys near the cabinet' -> are."""

    name: ClassVar[str] = "sva"
    attributes: ClassVar[tuple[AttributeSpec, ...]] = (
        AttributeSpec(name="subject_number", description="singular or plural subject"),
        AttributeSpec(name="attractor_number", description="singular or plural attractor noun"),
    )
    roles: ClassVar[tuple[str, ...]] = ("SUBJ", "ATTR", "END")
    slot_fields: ClassVar[dict[str, tuple[str, ...]]] = {"SUBJ": ("nouns",), "ATTR": ("nouns",)}
    answer_field: ClassVar[str | None] = "verbs"

    templates: list[str] = Field(default_factory=lambda: [
        "The {SUBJ} near the {ATTR}",
        "The {SUBJ} behind the {ATTR}",
        "The {SUBJ} next to the {ATTR}",
        "The {SUBJ} that the {ATTR} liked",
    ])
    nouns: list[tuple[str, str]] = Field(default_factory=lambda: list(NOUNS))
    verbs: dict[str, str] = Field(default_factory=lambda: {"sg": "is", "pl": "are"})

    def _make(self, template: int, subj: int, sn: str, attr: int, an: str) -> Assignment:
        form = {"sg": 0, "pl": 1}
        return Assignment(template=template,
                          slots={"SUBJ": self.nouns[subj][form[sn]], "ATTR": self.nouns[attr][form[an]]},
                          attrs={"subject_number": sn, "attractor_number": an},
                          roles={"SUBJ": "SUBJ", "ATTR": "ATTR", "END": "END"})

    def _lemma(self, word: str) -> int:
        return next(i for i, pair in enumerate(self.nouns) if word in pair)

    def sample(self, rng: random.Random) -> Assignment:
        subj, attr = rng.sample(range(len(self.nouns)), 2)
        return self._make(rng.randrange(len(self.templates)), subj, rng.choice(["sg", "pl"]), attr,
                          rng.choice(["sg", "pl"]))

    def answers(self, a: Assignment) -> tuple[str, str]:
        sn = a.attrs["subject_number"]
        return self.verbs[sn], self.verbs["pl" if sn == "sg" else "sg"]

    @override
    def counterfactual(self, a: Assignment, attribute: str, rng: random.Random) -> Assignment:
        self.attribute(attribute)
        flip = {"sg": "pl", "pl": "sg"}
        sn, an = a.attrs["subject_number"], a.attrs["attractor_number"]
        if attribute == "subject_number":
            sn = flip[sn]
        else:
            an = flip[an]
        return self._make(a.template, self._lemma(a.slots["SUBJ"]), sn, self._lemma(a.slots["ATTR"]), an)

    def split_key(self, a: Assignment) -> tuple[str, ...]:
        return (a.slots["SUBJ"], a.slots["ATTR"])


TASKS: dict[str, type[Task]] = {t.name: t for t in (IOITask, GreaterThanTask, GenderedPronounTask,
                                                     SubjectVerbAgreementTask)}


def get_task(name: str, **overrides) -> Task:
    """Instantiate a registered task by name; unknown names fail with the valid ones listed."""
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(f"unknown task {name!r}{hint}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name](**overrides)
