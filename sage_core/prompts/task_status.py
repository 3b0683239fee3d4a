"""Which tasks an evaluation runs on a model, and why the others do not.

A task runs when the model's tokenizer can pose it (`sage_core.prompts.adapt`) and the model does it: its accuracy on
held-out test prompts (the answer outranks the competing answer) is at least `MIN_ACCURACY`. Chance is 0.5 there (two
answers), so the default bar asks for a model clearly better than a coin; a task below it has no ground truth worth
scoring against and is reported as "not done by this model" with its figures. Benchmarks on random weights lower the
bar (`--min-task-accuracy 0`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

MIN_ACCURACY = 0.6


class TaskStatus(BaseModel):
    model_config = ConfigDict(frozen=True)
    task: str
    status: Literal["ran", "not posed", "not done"]
    reason: str = ""
    accuracy: float | None = None
    logit_diff: float | None = None
    vocabulary: str = ""  # what fitting the task's words to the tokenizer dropped

    @property
    def runs(self) -> bool:
        return self.status == "ran"

    def line(self, model: str) -> str:
        figures = (f"accuracy {self.accuracy:.2f}, logit diff {self.logit_diff:.2f}"
                   if self.accuracy is not None and self.logit_diff is not None else "no accuracy measured")
        if self.status == "not posed":
            return f"{self.task}: not posed on {model} ({self.reason})"
        if self.status == "not done":
            return f"{self.task}: not done by {model} ({figures}; {self.reason})"
        return f"{self.task}: ran on {model} ({figures})"


def task_statuses(tasks: Iterable[str], skipped: Mapping[str, str | None], notes: Mapping[str, str],
                  metrics: Mapping[str, Mapping[str, Any]], min_accuracy: float = MIN_ACCURACY) -> list[TaskStatus]:
    """One status per task: `skipped` (task -> why it cannot be posed, or None), `notes` (task -> vocabulary note),
    `metrics` (task -> the model's accuracy and logit_diff on it)."""
    out = []
    for t in tasks:
        note = notes.get(t, "")
        if skipped.get(t):
            out.append(TaskStatus(task=t, status="not posed", reason=str(skipped[t]), vocabulary=note))
            continue
        m = metrics.get(t, {})
        acc, ld = m.get("accuracy"), m.get("logit_diff")
        acc = None if acc is None or math.isnan(acc) else float(acc)
        ld = None if ld is None or math.isnan(ld) else float(ld)
        if min_accuracy > 0 and (acc is None or acc < min_accuracy):
            why = (f"accuracy below the bar of {min_accuracy:.2f} (chance is 0.50); lower it with "
                   "--min-task-accuracy to score anyway" if acc is not None else "no accuracy was measured")
            out.append(TaskStatus(task=t, status="not done", reason=why, accuracy=acc, logit_diff=ld, vocabulary=note))
        else:
            out.append(TaskStatus(task=t, status="ran", accuracy=acc, logit_diff=ld, vocabulary=note))
    return out
