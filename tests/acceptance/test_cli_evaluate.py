"""`sage evaluate` and `sage report` end to end, as a user runs them, on a fresh SAGE_HOME (the tiny zoo is built by
the first evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import one_line_error, run

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def leaderboard_text(stdout: str, task: str) -> str:
    """The printed leaderboard of `task`: from its table title to its controls line."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if f"{task}: SAEs against the ground truth" in ln)
    end = next(i for i, ln in enumerate(lines) if ln.startswith(f"controls on {task}:"))
    return "\n".join(lines[start:end + 1])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-eval-home")
    r = run(["evaluate", "--tiny", "--tasks", "ioi", "--per-group", "1"], home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return home, r


def test_evaluate_prints_leaderboard_and_report(evaluated):
    home, r = evaluated
    assert "control:oracle" in r.stdout and "control:random" in r.stdout and "report:" in r.stdout
    assert "controls on ioi:" in r.stdout
    report = Path(r.stdout.split("report:")[-1].split()[0])
    assert report.name == "README.md" and report.is_file() and report.is_relative_to(home)
    assert (home / "zoo" / "sage-test" / "saes").is_dir()
    assert "ground truth per attribute" in r.stdout and "  ioi Pos: " in r.stdout
    text = report.read_text()
    assert "**Ground truth**" in text and "- IO: " in text and "- Pos: " in text


def test_report_prints_the_same_leaderboard(evaluated):
    home, r = evaluated
    rep = run(["report"], home, timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    assert "control:oracle" in rep.stdout and "report:" in rep.stdout
    assert leaderboard_text(rep.stdout, "ioi") == leaderboard_text(r.stdout, "ioi")
    assert rep.stdout.split("report:")[-1].split()[0] == r.stdout.split("report:")[-1].split()[0]


def test_unknown_release_is_reported_and_the_run_completes(evaluated):
    home, _ = evaluated
    r = run(["evaluate", "--tiny", "--saes", "no-such-release/foo", "--tasks", "ioi", "--per-group", "1"], home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "no-such-release/foo" in r.stdout and "failed" in r.stdout
    assert "control:oracle" in r.stdout and "report:" in r.stdout
    readme = Path(r.stdout.split("report:")[-1].split()[0]).read_text()
    assert "no-such-release/foo" in readme and "unknown SAELens release 'no-such-release'" in readme


def test_evaluate_unknown_model_fails_with_one_line(tmp_path):
    r = run(["evaluate", "--model", "no-such-model", "--saes", "a/b"], tmp_path / "home", timeout=300)
    assert r.returncode == 2 and one_line_error(r) and "unknown model 'no-such-model'" in r.stdout, \
        r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "home" / "zoo").exists()


def test_report_of_unknown_run_fails_with_one_line(evaluated):
    home, _ = evaluated
    r = run(["report", "nosuchrun"], home, timeout=300)
    assert r.returncode == 2 and one_line_error(r) and "nosuchrun" in r.stdout, r.stdout + r.stderr[-2000:]
