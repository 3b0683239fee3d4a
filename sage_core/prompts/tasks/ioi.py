"""Indirect-object identification: a built-in task; it registers itself (`sage_core.prompts.library.register_task`)."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from sage_core.prompts.library import register_task
from sage_core.prompts.task import Assignment, AttributeSpec, Task
from sage_core.prompts.tasks.vocab import FEMALE_NAMES, MALE_NAMES, OBJECTS, PLACES, other_value


@register_task
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
            io = other_value(rng, self.names, {io, s})
        elif attribute == "S":
            s = other_value(rng, self.names, {io, s})
        elif attribute == "Pos":
            pos = "BAB" if pos == "ABB" else "ABB"
        else:
            self.attribute(attribute)
        return self._make(a.template, io, s, pos, a.slots["PLACE"], a.slots["OBJECT"])

    def split_key(self, a: Assignment) -> tuple[str, ...]:
        return (a.attrs["IO"], a.attrs["S"])
