"""A full disk while an evaluation's parquet tables are written (issue #27, "one line, not a traceback"): polars
raises its ComputeError, not an OSError, so the write-once guard did not turn it into one line. It is now a
StoreError in one line that says the disk is full and what to do, and nothing is left half-written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

from storage.atomic import StoreError
from storage.home import SageHome

# what polars 1.x/2.x says when the disk fills under write_parquet (seen writing to /dev/full)
ENOSPC = "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"


@pytest.fixture
def full_disk(monkeypatch):
    def write_parquet(self, file, *args, **kwargs):
        Path(file).write_bytes(b"PAR1 half a table")
        raise pl.exceptions.ComputeError(ENOSPC)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)


def _frames():
    scores = pl.DataFrame({"sae": ["a"], "task": ["ioi"], "value": [0.25]})
    return scores, pl.DataFrame({"sae": ["a"], "summary": [0.25]}), pl.DataFrame(
        schema={"sae": pl.String, "stage": pl.String, "error": pl.String})


def _one_line_disk_full(exc: BaseException) -> None:
    msg = str(exc)
    assert "\n" not in msg and "No space left on device" in msg and "rerun" in msg, msg


def test_a_full_disk_while_the_run_is_written_is_one_line(tmp_path, full_disk):
    from storage.scores import write_run

    d = SageHome(tmp_path).scores_dir("r")
    with pytest.raises(StoreError) as e:
        write_run(d, *_frames(), {"run": "r", "run_key": "k"})
    _one_line_disk_full(e.value)
    assert not d.parent.exists() or list(d.parent.iterdir()) == []  # nothing half-written left


def test_a_full_disk_while_the_report_or_a_part_is_written_is_one_line(tmp_path, full_disk):
    from storage.reports import write_report
    from storage.scores import write_part

    spec = importlib.util.spec_from_file_location(
        "_report_tables", Path(__file__).parents[1] / "report" / "test_reports.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    h = SageHome(tmp_path)
    with pytest.raises(StoreError) as e:
        write_report(h.report_dir("r"), tables._scores(), tables._leaderboard(), _frames()[2], {"run": "r"})
    _one_line_disk_full(e.value)
    with pytest.raises(StoreError) as e:
        write_part(h.score_part("k"), [], {"key": "k"})
    _one_line_disk_full(e.value)


def test_another_polars_error_is_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    from storage.scores import write_run

    def write_parquet(self, file, *args, **kwargs):
        raise pl.exceptions.ComputeError("cannot write a column of type Object")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    with pytest.raises(pl.exceptions.ComputeError):
        write_run(SageHome(tmp_path).scores_dir("r"), *_frames(), {"run": "r"})
