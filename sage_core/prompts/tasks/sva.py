"""Subject-verb agreement: a built-in task; it registers itself (`sage_core.prompts.library.register_task`)."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from sage_core.prompts.library import register_task
from sage_core.prompts.task import Assignment, AttributeSpec, Task
from sage_core.prompts.tasks.vocab import NOUNS


@register_task
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
