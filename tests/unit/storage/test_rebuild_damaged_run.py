"""A damaged run or report directory is rebuilt by a rerun of the same evaluation (issue #27 item 9): `sage
leaderboard` and `sage report` say "rerun the command", and the rerun must not then refuse its own run. Another
evaluation's damaged directory is still refused, and one whose owner cannot be read is moved aside, never deleted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

from storage.atomic import MARKER, StoreError, is_whole
from storage.home import SageHome


def _frames(v: float):
    scores = pl.DataFrame({"sae": ["a", "b"], "task": ["ioi", "ioi"], "value": [v, 0.5]})
    board = pl.DataFrame({"sae": ["a"], "summary": [v]})
    fails = pl.DataFrame(schema={"sae": pl.String, "stage": pl.String, "error": pl.String})
    return scores, board, fails


def _damage(d: Path, name: str) -> None:
    p = d / name
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated, as a full disk or a crash leaves it


def test_a_rerun_of_the_same_evaluation_rebuilds_its_damaged_run(tmp_path):
    from storage.scores import read_run, write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    _damage(d, "leaderboard.parquet")
    with pytest.raises(StoreError, match="rerun"):
        read_run(d)
    assert write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"}) == d
    assert is_whole(d) and read_run(d)[1]["summary"].to_list() == [0.25]
    assert [p.name for p in d.parent.iterdir()] == ["r"]  # nothing half-written left beside it


def test_another_evaluations_damaged_run_is_still_refused(tmp_path):
    from storage.scores import write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    _damage(d, "scores.parquet")
    with pytest.raises(StoreError, match="--run") as e:
        write_run(d, *_frames(0.75), {"run": "r", "run_key": "k2"})
    assert "\n" not in str(e.value)
    assert (d / "scores.parquet").is_file() and (d / MARKER).is_file()  # left as it was


def test_a_run_whose_marker_is_gone_is_moved_aside_and_rebuilt(tmp_path):
    from storage.scores import read_run, write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    (d / MARKER).unlink()
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    assert is_whole(d) and read_run(d)[1]["summary"].to_list() == [0.25]
    [aside] = [p for p in d.parent.iterdir() if p.name != "r"]
    assert aside.name.startswith("r.damaged-") and (aside / "scores.parquet").is_file()  # kept, not deleted


def test_a_rerun_rebuilds_its_damaged_report(tmp_path):
    from storage.reports import read_report, write_report

    spec = importlib.util.spec_from_file_location(
        "_report_tables", Path(__file__).parents[1] / "report" / "test_reports.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)  # the synthetic report tables of test_reports
    d = SageHome(tmp_path).report_dir("r")
    fails = pl.DataFrame(schema={"sae": pl.String, "stage": pl.String, "error": pl.String})
    write_report(d, tables._scores(), tables._leaderboard(), fails, {"run": "r", "run_key": "k1"})
    (d / "README.md").write_text("edited")
    write_report(d, tables._scores(), tables._leaderboard(), fails, {"run": "r", "run_key": "k1"})
    assert is_whole(d) and read_report(d)[1].height == tables._leaderboard().height
    assert (d / "README.md").read_text() != "edited"


def test_a_run_whose_marker_is_unreadable_is_moved_aside_and_rebuilt(tmp_path):
    from storage.scores import read_run, write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    (d / MARKER).write_text('{"run": "r", "run_ke')  # torn
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    assert is_whole(d) and read_run(d)[1]["summary"].to_list() == [0.25]
    assert len(list(d.parent.glob("r.damaged-*"))) == 1


def test_a_damaged_run_or_report_names_the_evaluation_to_rerun(tmp_path):
    """`sage leaderboard` and `sage report` only read: "rerun the command" (theirs) would rebuild nothing."""
    from storage.boards import read_run_tables
    from storage.reports import read_report
    from storage.scores import write_run

    h = SageHome(tmp_path)
    write_run(h.scores_dir("r"), *_frames(0.25), {"run": "r", "run_key": "k1"})
    _damage(h.scores_dir("r"), "leaderboard.parquet")
    with pytest.raises(StoreError) as e:
        read_run_tables(h, "r")
    assert "\n" not in str(e.value) and "rerun the `sage evaluate`" in str(e.value) and "run r" in str(e.value)
    assert "rerun the command" not in str(e.value) and "leaderboard.parquet" in str(e.value)
    spec = importlib.util.spec_from_file_location(
        "_report_tables", Path(__file__).parents[1] / "report" / "test_reports.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    d = h.report_dir("r")
    write_report_args = (tables._scores(), tables._leaderboard(), _frames(0.25)[2])
    from storage.reports import write_report

    write_report(d, *write_report_args, {"run": "r", "run_key": "k1"})
    _damage(d, "leaderboard.parquet")
    with pytest.raises(StoreError) as e:
        read_report(d)
    assert "rerun the `sage evaluate`" in str(e.value) and "rerun the command" not in str(e.value)
