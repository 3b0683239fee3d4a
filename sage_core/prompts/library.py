"""The task registry: every task registers itself by name (`register_task`), and `get_task` builds one. The built-in
tasks are the modules of `sage_core.prompts.tasks`, each data (templates, vocabularies) plus its answer rule; all of
them are imported here, so a new task is one new module there.

Templates read as natural text (punctuation attached, as in the IOI literature); vocabularies are chosen so every
item is one token for the built-in word-level tokenizer, and for a published tokenizer `sage_core.prompts.adapt` keeps
the items it spells as one token in context.
"""

from __future__ import annotations

import importlib
import pkgutil

from sage_core.prompts.task import Task, TaskError

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` available to `get_task` (and every listing of tasks) under its `name`."""
    name = cls.name
    if name in TASKS and TASKS[name] is not cls:
        raise TaskError(f"two tasks are named {name!r} ({TASKS[name].__module__} and {cls.__module__}): rename one")
    TASKS[name] = cls
    return cls


def get_task(name: str, **overrides) -> Task:
    """Instantiate a registered task by name; unknown names fail with the valid ones listed."""
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(f"unknown task {name!r}{hint}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name](**overrides)


def _import_builtin_tasks() -> None:
    from sage_core.prompts import tasks

    for mod in pkgutil.iter_modules(tasks.__path__):
        importlib.import_module(f"{tasks.__name__}.{mod.name}")


_import_builtin_tasks()


def task_attributes(tasks: list[str], attributes: list[str] | None = None) -> list[tuple[str, str]]:
    """The (task, attribute) pairs of `tasks` whose attribute is in `attributes` (all when None); a filter that
    matches none is refused in one line naming the attributes there are."""
    every = [(t, a) for t in tasks for a in get_task(t).attribute_names()]
    wanted = [(t, a) for t, a in every if attributes is None or a in attributes]
    if not wanted:
        raise TaskError(f"no attribute matches {attributes}; the tasks have {sorted({a for _, a in every})}")
    return wanted
