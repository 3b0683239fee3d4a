"""A damaged run or report directory is rebuilt by a rerun of the same `sage evaluate` (issue #27 item 9): before,
`sage report` said "rerun the command" and the rerun then refused its own run ("not a whole evaluation")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import one_line_error, run
from tests.acceptance.test_cli_evaluate import evaluated  # noqa: F401  (the tiny evaluation, built once)

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

ARGS = ["evaluate", "--tiny", "--tasks", "ioi", "--per-group", "1"]  # the fixture's evaluation


def test_the_same_evaluation_rebuilds_its_damaged_run_and_report(evaluated):  # noqa: F811
    from storage.atomic import is_whole

    home, first = evaluated
    name = Path(first.stdout.split("report:")[-1].split()[0]).parent.name
    scores, report = home / "scores" / name, home / "reports" / name
    board = scores / "leaderboard.parquet"
    board.write_bytes(board.read_bytes()[: board.stat().st_size // 2])
    (report / "README.md").write_text("edited")
    (report / "leaderboard.parquet").write_bytes(b"damaged")
    r = run(["report", name], home, timeout=300)
    assert r.returncode == 2 and one_line_error(r) and "rerun" in r.stdout, r.stdout

    again = run(ARGS, home)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert is_whole(scores) and is_whole(report) and (report / "README.md").read_text() != "edited"
    assert Path(again.stdout.split("report:")[-1].split()[0]).parent.name == name
    rep = run(["report", name], home, timeout=300)
    assert rep.returncode == 0 and "control:oracle" in rep.stdout, rep.stdout[-3000:]
