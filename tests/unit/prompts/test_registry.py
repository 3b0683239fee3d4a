"""The task registry: each built-in task's module registers it; a new task is one module with `@register_task`."""

from __future__ import annotations

import pkgutil
from typing import ClassVar

import pytest

from sage_core.prompts import library, tasks
from sage_core.prompts.library import TASKS, get_task, register_task
from sage_core.prompts.task import TaskError
from sage_core.prompts.tasks.sva import SubjectVerbAgreementTask


def test_every_task_module_registers_its_task():
    modules = {m.name for m in pkgutil.iter_modules(tasks.__path__)} - {"vocab"}
    assert {TASKS[n].__module__.rsplit(".", 1)[1] for n in TASKS} == modules
    assert set(TASKS) == {"ioi", "greater_than", "gendered_pronoun", "sva"}


def test_a_registered_task_is_built_by_name_and_a_second_one_of_that_name_is_refused(monkeypatch):
    monkeypatch.setattr(library, "TASKS", dict(TASKS))

    @register_task
    class Agreement(SubjectVerbAgreementTask):
        name: ClassVar[str] = "agreement"

    task = get_task("agreement")
    assert isinstance(task, Agreement) and task.attribute_names() == get_task("sva").attribute_names()

    with pytest.raises(TaskError, match="two tasks are named 'agreement'"):
        @register_task
        class Other(SubjectVerbAgreementTask):
            name: ClassVar[str] = "agreement"
    with pytest.raises(TaskError, match="did you mean 'agreement'"):
        get_task("agreemnt")
