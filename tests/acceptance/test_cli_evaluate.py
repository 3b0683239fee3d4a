"""`sage evaluate` and `sage report` end to end, as a user runs them, on a fresh SAGE_HOME (the tiny zoo is built by
the first evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import one_line_error, run, seed_zoo

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def leaderboard_text(stdout: str, task: str) -> str:
    """The printed leaderboard of `task`: from its table title to its controls line."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if f"{task}: SAEs against the ground truth" in ln)
    end = next(i for i, ln in enumerate(lines) if ln.startswith(f"controls on {task}:"))
    return "\n".join(lines[start:end + 1])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_zoo):
    home = seed_zoo(tiny_zoo, tmp_path_factory.mktemp("cli-eval-home"))
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


def test_the_log_names_each_stage_as_it_starts_and_ends(evaluated):
    """Issue #16 item 5: without a terminal (here a pipe, as `make run > log 2>&1`), each stage is one plain line
    when it starts (with its size) and one when it ends (with its duration), the first within seconds. The zoo's
    stages are the CLI's zoo build's (tests/acceptance/test_cli.py): this evaluation reuses the session's zoo."""
    import re

    _, r = evaluated
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[sage ")]
    assert lines and lines[0].split("] ", 1)[1].startswith("start-up: "), r.stderr[:2000]
    stages = ("start-up", "location search", "capture", "ground truth", "scoring", "core metrics")
    for stage in stages:
        starts = [ln for ln in lines if re.fullmatch(rf"\[sage \d\d:\d\d:\d\d\] {stage}: (?!done).+", ln)]
        ends = [ln for ln in lines if re.fullmatch(rf"\[sage \d\d:\d\d:\d\d\] {stage}: done(, .+)? in \d+\.\d s", ln)]
        assert starts and len(starts) == len(ends), (stage, lines)
    assert re.search(r"\] scoring: \d+ units$", "\n".join(lines), flags=re.M), lines


def test_report_prints_the_same_leaderboard(evaluated):
    home, r = evaluated
    rep = run(["report"], home, timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    assert "control:oracle" in rep.stdout and "report:" in rep.stdout
    assert leaderboard_text(rep.stdout, "ioi") == leaderboard_text(r.stdout, "ioi")
    # it names the run, its model and SAEs, and gives the ground truth's verdicts (issue #26 item 5)
    run_name = rep.stdout.split("report:")[-1].split()[0].rstrip("/").split("/")[-2]
    assert f"run {run_name}: model sage-test, " in rep.stdout and " SAE(s) (" in rep.stdout, rep.stdout[:2000]
    assert "ground truth per attribute" in rep.stdout and " IO: " in rep.stdout
    assert rep.stdout.split("report:")[-1].split()[0] == r.stdout.split("report:")[-1].split()[0]


def test_a_bad_sae_among_good_ones_fails_alone_and_the_run_exits_3(evaluated, tmp_path):
    """Issue #15 items 9, 12: every good result is written, the bad SAE's reason is printed in one line (no
    tracebacks on the console), and the exit code says that something failed."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    home, _ = evaluated
    good = list_zoo_saes(SageHome(home), "sage-test")[0]
    bad = tmp_path / "wrong-width"
    StandardSAE(StandardSAEConfig(d_in=7, d_sae=8, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"))) \
        .save_model(bad)
    args = ["evaluate", "--tiny", "--tasks", "ioi", "--per-group", "1", "--run", "mixed"]
    r = run([*args, "--saes", f"zoo:{good},{bad}"], home)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert f"failed: {bad} (load): SAE 'wrong-width' has d_in=7" in r.stdout, r.stdout[-3000:]
    assert "control:oracle" in r.stdout and "report:" in r.stdout
    readme = Path(r.stdout.split("report:")[-1].split()[0]).read_text()
    assert "wrong-width" in readme and "d_in=7" in readme

    # the same run name with other content is refused in one line, and the first run's results are kept
    r2 = run([*args, "--saes", f"zoo:{good}"], home)
    assert r2.returncode == 2 and one_line_error(r2) and "--run" in r2.stdout, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "wrong-width" in (home / "reports" / "mixed" / "README.md").read_text()


def test_evaluate_unknown_model_fails_with_one_line(tmp_path):
    r = run(["evaluate", "--model", "no-such-model", "--saes", "a/b"], tmp_path / "home", timeout=300)
    assert r.returncode == 2 and one_line_error(r) and "unknown model 'no-such-model'" in r.stdout, \
        r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "home" / "zoo").exists()


def test_report_of_unknown_run_fails_with_one_line(evaluated):
    home, _ = evaluated
    r = run(["report", "nosuchrun"], home, timeout=300)
    assert r.returncode == 2 and one_line_error(r) and "nosuchrun" in r.stdout, r.stdout + r.stderr[-2000:]


def test_the_same_evaluation_rebuilds_its_damaged_run_and_report(evaluated):
    """Issue #27 item 9: a damaged run or report directory is rebuilt by a rerun of the same `sage evaluate` (before,
    `sage report` said "rerun the command" and the rerun refused its own run). Last in this module: it damages the
    fixture's run (and rebuilds it), so it shares the module's one evaluation instead of building its own."""
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

    again = run(["evaluate", "--tiny", "--tasks", "ioi", "--per-group", "1"], home)  # the fixture's evaluation
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert is_whole(scores) and is_whole(report) and (report / "README.md").read_text() != "edited"
    assert Path(again.stdout.split("report:")[-1].split()[0]).parent.name == name
    rep = run(["report", name], home, timeout=300)
    assert rep.returncode == 0 and "control:oracle" in rep.stdout, rep.stdout[-3000:]
