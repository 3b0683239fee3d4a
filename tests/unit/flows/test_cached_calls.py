"""Every call of a cached SAGE task in a flow goes through `in_home` (issue 28 item 1): a cached task called bare would
keep its cache records in Prefect's own store, outside the data root, where the next run and the other workers never
look. Read from the flows' source, so a new call site that forgets it fails here."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import flows
import tasks

WRAPPERS = {"in_home", "at_home"}


def _cached_task_names() -> set[str]:
    from prefect import Task

    from tasks.common import StageCache

    names = set()
    for m in pkgutil.iter_modules(tasks.__path__):
        for name, value in vars(importlib.import_module(f"tasks.{m.name}")).items():
            if isinstance(value, Task) and isinstance(value.cache_policy, StageCache):
                names.add(name)
    return names


def _bare_uses(source: str, cached: set[str]) -> list[int]:
    """Line numbers where a cached task is referenced other than as the first argument of `in_home`/`at_home`."""
    tree = ast.parse(source)
    wrapped = {id(call.args[0]) for call in ast.walk(tree) if isinstance(call, ast.Call) and call.args
               and getattr(call.func, "id", getattr(call.func, "attr", None)) in WRAPPERS}
    lines = []
    for node in ast.walk(tree):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if name in cached and id(node) not in wrapped:
            lines.append(node.lineno)
    return lines


def test_the_check_sees_a_bare_call():
    assert _bare_uses("x = zt.train_model.submit(cfg)\ny = at_home(zt.train_model)(cfg)\n", {"train_model"}) == [1]
    assert _bare_uses("y = in_home(train_sae, h).map(specs)\n", {"train_sae"}) == []


def test_every_cached_task_a_flow_calls_is_wrapped_in_in_home():
    cached = _cached_task_names()
    assert {"train_model", "fit_section", "section_references"} <= cached
    bare = {str(p.relative_to(Path(flows.__file__).parent)): lines
            for p in sorted(Path(flows.__file__).parent.rglob("*.py"))
            if (lines := _bare_uses(p.read_text(), cached))}
    assert not bare, f"cached tasks called without in_home (file: lines): {bare}"
