"""Greater-than: a built-in task; it registers itself (`sage_core.prompts.library.register_task`)."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from sage_core.prompts.library import register_task
from sage_core.prompts.task import Assignment, AttributeSpec, Task, TaskError
from sage_core.prompts.tasks.vocab import EVENTS


@register_task
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
