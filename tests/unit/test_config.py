"""The typed configuration's own checks (sage_core/config.py)."""

from __future__ import annotations

import pytest

from sage_core.config import ZooConfig


def test_a_task_the_zoo_has_no_prompts_for_is_named_in_one_line():
    zoo = ZooConfig.tiny()
    zoo.check_tasks(["ioi", "sva"])
    zoo.check_tasks(None)
    with pytest.raises(ValueError, match=r"task 'greater_than' is not one of the zoo's tasks \['ioi', 'sva'\]") as e:
        zoo.check_tasks(["ioi", "greater_than", "nope"])
    assert "\n" not in str(e.value)
