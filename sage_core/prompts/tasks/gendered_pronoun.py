"""Gendered pronoun: a built-in task; it registers itself (`sage_core.prompts.library.register_task`)."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from sage_core.prompts.library import register_task
from sage_core.prompts.task import Assignment, AttributeSpec, Task, stable_digest
from sage_core.prompts.tasks.vocab import FEMALE_NAMES, MALE_NAMES, OBJECTS, PLACES


@register_task
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
