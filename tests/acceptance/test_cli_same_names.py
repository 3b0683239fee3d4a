"""`sage evaluate` with two different SAEs that share a name (issue #27 item 2): refused in one line before any work
(no zoo built, nothing captured or scored), naming both specs."""

from __future__ import annotations

import pytest

from tests.acceptance.cli import one_line_error, run_in_process
from tests.unit.storage.test_same_named_saes import NAME, _write_sae

pytestmark = [pytest.mark.acceptance]


def test_evaluate_refuses_a_directory_named_like_a_zoo_sae(tmp_path):
    home = tmp_path / "home"
    lab = _write_sae(tmp_path / "lab" / NAME)
    r = run_in_process(["evaluate", "--tiny", "--tasks", "ioi", "--saes", f"zoo:{NAME},{lab}"], home)
    assert r.returncode == 2 and one_line_error(r), r.stdout
    assert f"zoo:{NAME}" in r.stdout and str(lab) in r.stdout and "same name" in r.stdout, r.stdout
    assert not (home / "zoo").exists() and not (home / "scores").exists()
