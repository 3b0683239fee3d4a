"""Nothing done twice (issue #28 item 6): a run's parquet tables are written once, under scores/<run>/, and its
report links them; the markdown summary is built once per run, for the README, and the Prefect summary artifact is
that README as written."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path

import polars as pl
import pytest

import report.summary as summary_mod
from storage.atomic import StoreError
from storage.home import SageHome

_spec = importlib.util.spec_from_file_location("_report_tables", Path(__file__).with_name("test_reports.py"))
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)  # the synthetic report tables of test_reports

FAILS = pl.DataFrame({"sae": ["broken-sae"], "stage": ["load"], "error": ["ValueError: d_in 64 != 128"]})
META = {**tables.META, "run": "r", "run_key": "k1"}


def _run(h: SageHome, run_key: str = "k1", failures: pl.DataFrame = FAILS) -> Path:
    from storage.scores import write_run

    return write_run(h.scores_dir("r"), tables._scores(), tables._leaderboard(), failures,
                     {**META, "run_key": run_key})


def _report(h: SageHome) -> Path:
    from storage.reports import write_report

    return write_report(h.report_dir("r"), tables._scores(), tables._leaderboard(), FAILS, META,
                        tables=h.scores_dir("r"))


def _parquet_digests(root: Path) -> dict[str, list[Path]]:
    seen: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*.parquet")):
        seen.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p)
    return seen


def _links(readme: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+\.parquet)\)", readme)


def test_a_runs_report_links_its_tables_and_holds_no_copy(tmp_path):
    from storage.reports import read_failures, read_report

    h = SageHome(tmp_path)
    _run(h)
    d = _report(h)
    assert not list(d.rglob("*.parquet"))
    twice = {k: v for k, v in _parquet_digests(h.root).items() if len(v) > 1}
    assert not twice, twice
    links = _links((d / "README.md").read_text())
    assert links == [f"../../scores/r/{n}" for n in ("scores.parquet", "leaderboard.parquet", "failures.parquet")]
    assert all((d / rel).resolve().is_file() and (d / rel).resolve().parent == h.scores_dir("r").resolve()
               for rel in links)
    s, b = read_report(d)
    assert s.equals(tables._scores()) and b.equals(tables._leaderboard())
    assert read_failures(d).equals(FAILS)


def test_a_damaged_linked_table_names_the_evaluation_to_rerun_and_a_rerun_mends_the_report(tmp_path):
    from storage.reports import read_report

    h = SageHome(tmp_path)
    _run(h)
    d = _report(h)
    p = h.scores_dir("r") / "leaderboard.parquet"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(StoreError) as e:
        read_report(d)
    msg = str(e.value)
    assert "\n" not in msg and "leaderboard.parquet" in msg and msg.count("rerun the `sage evaluate`") == 1
    assert "run r," in msg and "rerun the command" not in msg
    _run(h)  # the same evaluation again rebuilds its run; the report, whole, is kept and reads it
    assert read_report(d)[1].equals(tables._leaderboard())


def test_a_report_whose_run_is_gone_or_replaced_says_so_in_one_line(tmp_path):
    import shutil

    from storage.reports import read_report

    h = SageHome(tmp_path)
    _run(h)
    d = _report(h)
    shutil.rmtree(h.scores_dir("r"))
    with pytest.raises(StoreError, match=r"missing; rerun the `sage evaluate`") as e:
        read_report(d)
    assert "\n" not in str(e.value)
    _run(h, run_key="k2")  # another evaluation under the name, the old report left: never shown with its tables
    with pytest.raises(StoreError, match=r"holds another evaluation than the report .* delete") as e:
        read_report(d)
    assert "\n" not in str(e.value) and "same options" not in str(e.value)  # no rerun rebuilds this one


def test_a_report_is_not_written_over_another_runs_tables(tmp_path):
    from storage.reports import write_report

    h = SageHome(tmp_path)
    _run(h, run_key="k2")
    with pytest.raises(StoreError, match="holds another evaluation"):
        write_report(h.report_dir("r"), tables._scores(), tables._leaderboard(), FAILS, META, tables=h.scores_dir("r"))
    assert not h.report_dir("r").exists()


def test_a_damaged_run_names_its_file_and_the_evaluation_to_rerun(tmp_path):
    from storage.scores import read_run

    h = SageHome(tmp_path)
    d = _run(h)
    p = d / "scores.parquet"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(StoreError) as e:
        read_run(d)
    assert "scores.parquet" in str(e.value) and "rerun the `sage evaluate`" in str(e.value)


def test_the_summary_artifact_is_the_readme_without_its_plots():
    from report.summary import artifact_summary, summary_markdown

    board, fails = tables._leaderboard(), tables.FAILURES
    links = {"scores": "../../scores/r/scores.parquet", "leaderboard": "../../scores/r/leaderboard.parquet"}
    plots = {t: [f"plots/{t}-metrics.png", f"plots/{t}-f1-heatmap.png"] for t in tables.TASKS}
    readme = summary_markdown(board, fails, META, plots=plots, tables=links)
    art = artifact_summary(readme, where="/data/reports/r")
    assert "plots/" not in art and "![" not in art
    assert ("**Tables** (parquet): scores `/data/scores/r/scores.parquet`, leaderboard "
            "`/data/scores/r/leaderboard.parquet`.") in art
    plain = summary_markdown(board, fails, META, tables=links)  # as the artifact was built a second time: no plots

    def but_tables(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.startswith("**Tables**")]

    assert but_tables(art) == but_tables(plain)


def test_one_runs_report_and_publish_build_the_summary_once(tmp_path, monkeypatch):
    import tasks.report as rt
    from storage.records import dir_ref
    from storage.refs import RunRef

    calls = []
    original = summary_mod.summary_markdown

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    for mod in list(sys.modules.values()):  # wherever the name was imported
        if getattr(mod, "summary_markdown", None) is original:
            monkeypatch.setattr(mod, "summary_markdown", counted)
    published = {}
    monkeypatch.setattr(rt, "create_markdown_artifact", lambda key, markdown, **_: published.update({key: markdown}))
    monkeypatch.setattr(rt, "create_table_artifact", lambda key, table, **_: published.update({key: table}))

    h = SageHome(tmp_path)
    run = dir_ref(h, RunRef, _run(h), run="r")
    verdicts = []
    report = rt.write_run_report.fn(run, verdicts, [], str(h.root))
    lines = rt.publish_run.fn(run, report, verdicts, str(h.root))
    assert len(calls) == 1
    readme = (h.at(report) / "README.md").read_text()
    assert published["sae-evaluation-summary"] == summary_mod.artifact_summary(readme, str(h.at(report)))
    assert "broken-sae" in published["sae-evaluation-summary"] and lines[-1].startswith("report: ")
    assert not list(h.at(report).rglob("*.parquet"))
