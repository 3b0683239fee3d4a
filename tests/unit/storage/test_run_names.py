"""Run names cannot escape SAGE_HOME or overwrite anything (issue #15 item 2)."""

from __future__ import annotations

import polars as pl
import pytest

from storage.atomic import StoreError, is_complete, write_once
from storage.home import SageHome, check_run_name


@pytest.mark.parametrize("name", ["run-1", "nightly_2024.06.01", "A", "x" * 64])
def test_good_names_pass(name):
    assert check_run_name(name) == name


@pytest.mark.parametrize("name", ["../zoo", "..", ".", "/abs", "/tmp/x", "a/b", "a\\b", "", " ", "-rf", ".hidden",
                                  "x" * 65, "parts", "references", "core", "records", "Parts", "run\n2",
                                  "r.partial-123", "r.stale-9", "nul\x00"])
def test_bad_names_are_refused_in_one_line(name):
    with pytest.raises(ValueError) as e:
        check_run_name(name)
    msg = str(e.value)
    assert "\n" not in msg and "--run" in msg


@pytest.mark.parametrize("name", ["../zoo", "/abs", "parts", "../../etc"])
def test_scores_and_report_dirs_validate_the_name(tmp_path, name):
    h = SageHome(tmp_path)
    with pytest.raises(ValueError):
        h.scores_dir(name)
    with pytest.raises(ValueError):
        h.report_dir(name)


def _zoo(home: SageHome):
    d = home.sae_dir("sage-tiny", "blocks.0.hook_resid_post--topk-64")
    with write_once(d, {"kind": "sae"}) as tmp:
        (tmp / "sae_weights.safetensors").write_bytes(b"weights")
    return d


def test_run_dot_dot_zoo_leaves_the_zoo_intact(tmp_path):
    """What `--run ../zoo` did: scores/../zoo is the zoo root (no marker), which write_once replaced."""
    from storage.scores import write_run

    h = SageHome(tmp_path)
    sae = _zoo(h)
    frame = pl.DataFrame({"sae": ["a"], "value": [1.0]})
    with pytest.raises(ValueError, match="--run"):
        write_run(h.scores_dir("../zoo"), frame, frame, frame, {"run": "../zoo"})
    assert is_complete(sae) and (sae / "sae_weights.safetensors").read_bytes() == b"weights"


def _frames(v: float):
    scores = pl.DataFrame({"sae": ["a", "b"], "task": ["ioi", "ioi"], "value": [v, 0.5]})
    board = pl.DataFrame({"sae": ["a"], "summary": [v]})
    fails = pl.DataFrame(schema={"sae": pl.String, "stage": pl.String, "error": pl.String})
    return scores, board, fails


def test_an_identical_rerun_is_reused(tmp_path):
    from storage.scores import write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r", "created": "then"})
    before = (d / "_COMPLETE.json").read_text()
    assert write_run(d, *_frames(0.25), {"run": "r", "created": "now"}) == d
    assert (d / "_COMPLETE.json").read_text() == before


def test_a_reused_name_with_other_content_is_refused_in_one_line(tmp_path):
    from storage.scores import read_run, write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r"})
    with pytest.raises(StoreError, match="--run") as e:
        write_run(d, *_frames(0.75), {"run": "r"})
    assert "\n" not in str(e.value) and "scores/r" in str(e.value)
    assert read_run(d)[1]["summary"].to_list() == [0.25], "the earlier run is kept as it was"


def test_a_run_key_decides_when_given(tmp_path):
    """The flow passes its run key: the same key is the same run even if a float was recomputed differently."""
    from storage.scores import write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r", "run_key": "k1"})
    write_run(d, *_frames(0.2500001), {"run": "r", "run_key": "k1"})
    with pytest.raises(StoreError, match="--run"):
        write_run(d, *_frames(0.25), {"run": "r", "run_key": "k2"})


def test_a_report_under_a_reused_name_with_other_content_is_refused(tmp_path):
    import importlib.util
    from pathlib import Path

    from storage.reports import read_report, write_report

    spec = importlib.util.spec_from_file_location("_report_tables", Path(__file__).parents[1] / "report" / "test_reports.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)  # the synthetic report tables of test_reports
    _leaderboard, _scores = tables._leaderboard, tables._scores

    d = SageHome(tmp_path).report_dir("r")
    fails = pl.DataFrame(schema={"sae": pl.String, "stage": pl.String, "error": pl.String})
    write_report(d, _scores(), _leaderboard(), fails, {"run": "r", "run_key": "k1"})
    write_report(d, _scores(), _leaderboard(), fails, {"run": "r", "run_key": "k1"})  # the same run: reused
    with pytest.raises(StoreError, match="--run") as e:
        write_report(d, _scores(), _leaderboard(), fails, {"run": "r", "run_key": "k2"})
    assert "\n" not in str(e.value)
    assert read_report(d)[1].height == _leaderboard().height


def test_writing_a_run_over_the_zoo_root_is_refused_by_storage_itself(tmp_path):
    """Defence in depth: a path that reached write_run without the name check (the zoo root, holding complete SAEs)
    is never replaced."""
    from storage.atomic import StoreError
    from storage.scores import write_run

    h = SageHome(tmp_path)
    sae = _zoo(h)
    with pytest.raises(StoreError):
        write_run(h.root / "zoo", *_frames(0.25), {"run": "zoo"})
    assert is_complete(sae) and (sae / "sae_weights.safetensors").read_bytes() == b"weights"


def test_a_damaged_run_under_the_name_is_not_written_over(tmp_path):
    from storage.atomic import StoreError
    from storage.scores import write_run

    d = SageHome(tmp_path).scores_dir("r")
    write_run(d, *_frames(0.25), {"run": "r"})
    (d / "leaderboard.parquet").write_bytes(b"damaged")
    with pytest.raises(StoreError, match="--run") as e:
        write_run(d, *_frames(0.75), {"run": "r"})
    assert len(str(e.value).splitlines()) == 1
    assert (d / "leaderboard.parquet").read_bytes() == b"damaged" and (d / "scores.parquet").is_file()


def test_relative_keeps_a_symlinked_subdirectory_inside_the_root(tmp_path):
    elsewhere = tmp_path / "other-disk" / "activations"
    elsewhere.mkdir(parents=True)
    h = SageHome(tmp_path / "home")
    h.root.mkdir()
    (h.root / "activations").symlink_to(elsewhere)
    store = h.root / "activations" / "m" / "s.zarr"
    assert h.relative(store) == "activations/m/s.zarr"
    assert h.at(h.relative(store)) == store


def test_a_damaged_latest_report_is_named_not_passed_over(tmp_path):
    import time

    from storage.atomic import StoreError, write_once
    from storage.reports import latest_report, read_report

    h = SageHome(tmp_path)
    scores, board, _ = _frames(0.25)
    for run in ("old", "new"):
        with write_once(h.report_dir(run), {"run": run}, kind="report") as tmp:
            scores.write_parquet(tmp / "scores.parquet")
            board.write_parquet(tmp / "leaderboard.parquet")
        time.sleep(0.05)
    (h.report_dir("new") / "leaderboard.parquet").write_bytes(b"damaged")
    assert latest_report(h.reports_root()) == h.report_dir("new")
    with pytest.raises(StoreError, match="leaderboard.parquet"):
        read_report(latest_report(h.reports_root()))
