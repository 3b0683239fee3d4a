"""Report figures, markdown and the write-once report directory (synthetic tables; fast)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest

from report.controls import controls_verdict
from report.figures import f1_heatmap, f1_matrix, metric_panels
from report.summary import leaderboard_text, summary_markdown
from storage.atomic import MARKER, StoreError, is_complete
from storage.reports import PLOT_METRICS, read_failures, read_report, write_report

PNG = b"\x89PNG\r\n\x1a\n"
TASKS = ("ioi", "greater_than")
SAES = {"oracle-sae": "oracle", "random-sae": "random", "sae-a": "trained", "sae-b": "trained"}
SUMMARY = {"oracle-sae": 0.9, "random-sae": 0.1, "sae-a": 0.6, "sae-b": 0.4}


def _scores() -> pl.DataFrame:
    rows = []
    for task in TASKS:
        attrs = {"io": ["Mary", "John"], "pos": ["ABB", "BAB"]} if task == "ioi" else {"yy": ["17", "42"]}
        for sae in SAES:
            for hook, head in (("blocks.1.attn.hook_z", 0), ("blocks.1.hook_resid_post", None)):
                base = dict(sae=sae, task=task, hook=hook, head=head, role="END", mapping="native")
                rows.append({**base, "metric": "explained_variance", "value": SUMMARY[sae]})
                rows.append({**base, "metric": "summary", "value": SUMMARY[sae]})
                for attr, values in attrs.items():
                    for k, v in enumerate(values):
                        # The second cross-section is better by 0.1: the heatmap must show the max.
                        value = round(SUMMARY[sae] / (k + 1) + (0.1 if head is None else 0.0), 6)
                        rows.append({**base, "metric": f"f1:{attr}={v}", "value": value})
    # A NaN on one cross-section must not win the max.
    rows.append(dict(sae="sae-b", task="ioi", hook="blocks.0.hook_resid_post", head=None, role="S2",
                     mapping="projection", metric="f1:io=Mary", value=float("nan")))
    schema = {"sae": pl.String, "task": pl.String, "hook": pl.String, "head": pl.Int64, "role": pl.String,
              "mapping": pl.String, "metric": pl.String, "value": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _leaderboard(summary: dict[str, float] | None = None) -> pl.DataFrame:
    summary = summary or SUMMARY
    rows = []
    for task in TASKS:
        for sae, kind in SAES.items():
            s = summary[sae]
            rows.append(dict(
                sae=sae, task=task, kind=kind, mapping="native", summary=s, n_sections=2,
                explained_variance=s, sufficiency=s + 0.01, faithfulness=s + 0.005, necessity=s + 0.02,
                edit_accuracy_k4=float("nan") if sae == "sae-b" else s, f1_mean=s, mcc=s,
                ce_loss_recovered=None if kind != "trained" else 0.8, kl=None, l0=12.0 if kind == "trained" else None,
                dead_share=None, status="ok"))
    schema = {"sae": pl.String, "task": pl.String, "kind": pl.String, "mapping": pl.String, "summary": pl.Float64,
              "n_sections": pl.Int64, "explained_variance": pl.Float64, "sufficiency": pl.Float64,
              "faithfulness": pl.Float64, "necessity": pl.Float64, "edit_accuracy_k4": pl.Float64, "f1_mean": pl.Float64, "mcc": pl.Float64,
              "ce_loss_recovered": pl.Float64, "kl": pl.Float64, "l0": pl.Float64, "dead_share": pl.Float64,
              "status": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")


FAILURES = pl.DataFrame({"sae": ["broken-sae"], "error": ["ValueError: d_in 64 != 128\nTraceback ..."]})
META = {"run": "unit-run", "model": "sage-tiny", "tasks": list(TASKS), "created": "2025-01-01T00:00:00"}


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    yield
    plt.close("all")


def test_f1_matrix_takes_the_best_cross_section_and_groups_columns():
    saes, columns, mat = f1_matrix(_scores(), "ioi")
    assert saes == list(SAES)
    assert columns == [("io", "John"), ("io", "Mary"), ("pos", "ABB"), ("pos", "BAB")]
    i, j = saes.index("sae-a"), columns.index(("io", "Mary"))
    assert mat[i, j] == pytest.approx(0.6 + 0.1)  # max over cross-sections, not the mean
    assert mat[saes.index("sae-b"), j] == pytest.approx(0.5)  # the NaN row is ignored
    assert mat[i, columns.index(("io", "John"))] == pytest.approx(0.3 + 0.1)
    # A fixed row order, with an SAE that has no rows → NaN row.
    saes2, _, mat2 = f1_matrix(_scores(), "ioi", ["sae-b", "ghost"])
    assert saes2 == ["sae-b", "ghost"] and np.isnan(mat2[1]).all() and not np.isnan(mat2[0]).any()


def test_f1_heatmap_shows_the_matrix():
    fig = f1_heatmap(_scores(), "ioi")
    data = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    np.testing.assert_allclose(data, f1_matrix(_scores(), "ioi")[2])
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    assert any(t.get_text() == "0.70" for t in fig.axes[0].texts)  # small grid: annotated
    empty = f1_heatmap(_scores(), "no-such-task")
    assert not empty.axes[0].images


def test_an_unbounded_metrics_outlier_is_marked_at_the_axis_edge_not_stretching_it():
    """necessity -663.6 for one projection (seen on greater_than): the other bars stay readable, the outlier is
    written out at the edge and the title says the axis is cut; a bounded metric is never cut."""
    board = pl.concat([_leaderboard().with_columns(pl.col("sae") + f"-{i}") for i in range(2)])
    board = board.with_columns(pl.when(pl.col("sae") == "sae-a-0").then(-663.6).otherwise(pl.col("necessity"))
                               .alias("necessity"))
    fig = metric_panels(board, "ioi", ["necessity", "mcc"])
    nec, mcc = (ax for ax in fig.axes if ax.get_title())
    assert nec.get_xlim()[0] > -10 and nec.get_title() == "necessity\nrange (-inf, 1]; axis cut"
    assert any("663.6" in t.get_text() and "◀" in t.get_text() for t in nec.texts)
    assert min(bar.get_width() for bar in nec.patches) >= nec.get_xlim()[0]  # the outlier's bar ends at the edge
    assert mcc.get_title() == "mcc" and not any("◀" in t.get_text() for t in mcc.texts)
    plt.close("all")


def test_metric_panels_one_panel_per_metric_sorted_by_summary_with_controls_apart():
    fig = metric_panels(_leaderboard(), "ioi", PLOT_METRICS)
    axes = [ax for ax in fig.axes if ax.get_title()]
    titles = [ax.get_title().split("\n")[0] for ax in axes]  # an unbounded metric's range on a second line
    assert titles == [m for m in PLOT_METRICS if m in _leaderboard().columns]
    assert axes[titles.index("necessity")].get_title() == "necessity\nrange (-inf, 1]"
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == ["random-sae", "oracle-sae", "sae-b", "sae-a"]  # best summary at the top, the controls apart
    edit = axes[titles.index("edit_accuracy_k4")]
    widths = [bar.get_width() for bar in edit.patches]
    assert widths == [0.1, 0.9, 0.0, 0.6]  # sae-b's NaN drawn as zero and marked
    assert any("n/a" in t.get_text() for t in edit.texts)
    colours = {lab: bar.get_facecolor() for lab, bar in zip(labels, axes[0].patches, strict=True)}
    assert colours["sae-a"] == colours["sae-b"] != colours["oracle-sae"] != colours["random-sae"]
    big = pl.concat([_leaderboard().with_columns(pl.col("sae") + f"-{i}") for i in range(10)])
    assert metric_panels(big, "ioi", PLOT_METRICS).get_size_inches()[1] > fig.get_size_inches()[1]
    plt.close("all")


def test_controls_verdict_holds_and_names_violators():
    holds, text = controls_verdict(_leaderboard(), "ioi")
    assert holds is True and "holds" in text
    bad = _leaderboard({**SUMMARY, "sae-a": 0.95})
    holds, text = controls_verdict(bad, "ioi")
    assert holds is False and "sae-a" in text and "sae-b" not in text
    no_random = _leaderboard().filter(pl.col("kind") != "random")
    assert controls_verdict(no_random, "ioi")[0] is None


def test_summary_markdown_tables_controls_and_failures():
    md = summary_markdown(_leaderboard(), FAILURES, META)
    assert md.startswith("# SAGE report: unit-run")
    assert "sage-tiny" in md and "ioi, greater_than" in md and "**SAEs:** 4" in md and "2025-01-01" in md
    # per task the ranking (the summary and its parts) and then the other metrics, both in rank order
    assert md.count("| rank | SAE | kind | mapping | n | summary | faith. | nec. | gain@4 | F1 | MCC |") == 2
    assert md.count("| rank | SAE | EV | L0 | suff. | edit@4 | CE rec. |") == 2
    ioi = md.split("## ioi")[1].split("## greater_than")[0].split("**Controls:**")[0]
    ranking, other = ioi.split("Other metrics")
    rows = [ln for ln in ranking.splitlines() if ln.startswith("| ") and "rank" not in ln]
    assert [r.split("|")[2].strip() for r in rows] == ["sae-a", "sae-b", "oracle-sae", "random-sae"]
    assert rows[0] == "| 1 | sae-a | trained | native | 2 | 0.600 | 0.605 | 0.620 | – | 0.600 | 0.600 |"
    assert rows[2].startswith("| ctrl | oracle-sae | oracle |") and rows[3].startswith("| ctrl | random-sae |")
    details = [ln for ln in other.splitlines() if ln.startswith("| ") and "rank" not in ln]
    assert details[1] == "| 2 | sae-b | 0.400 | 12.000 | 0.410 | – | 0.800 |"  # sae-b's NaN edit accuracy
    assert md.count("**Controls:** ✅") == 2
    assert "## Failed SAEs" in md and "broken-sae" in md and "d_in 64 != 128" in md and "Traceback" not in md
    bad = summary_markdown(_leaderboard({**SUMMARY, "sae-b": 0.99}), FAILURES.clear(), META)
    assert bad.count("**Controls:** ❌") == 2 and "sae-b (0.990)" in bad
    assert bad.rstrip().endswith("none")


def test_summary_markdown_lists_the_ground_truth_verdicts_under_their_task():
    from report.verdicts import VERDICT_SCHEMA

    verdicts = pl.DataFrame([
        {"task": "ioi", "attribute": "IO", "verdict": "holds", "reason": "meets the bar at L0.resid_pre@IO (mse)"},
        {"task": "ioi", "attribute": "Pos", "verdict": "not read", "reason": "the patch changes at most 7%"},
        {"task": "greater_than", "attribute": "YY", "verdict": "below bar", "reason": "necessity 0.5 | x"},
    ], schema=VERDICT_SCHEMA)
    md = summary_markdown(_leaderboard(), FAILURES.clear(), META, verdicts=verdicts)
    ioi, gt = md.split("## ioi")[1].split("## greater_than")
    assert "- IO: holds - meets the bar at L0.resid_pre@IO (mse)" in ioi and "- Pos: not read - " in ioi
    assert "YY" not in ioi and "- YY: below bar - necessity 0.5 \\| x" in gt  # a pipe would break the markdown
    assert md.count("**Ground truth** (bar: sufficiency, necessity and edit accuracy >= 0.8") == 2
    assert "**Ground truth**" not in summary_markdown(_leaderboard(), FAILURES.clear(), META)


def test_leaderboard_text_is_aligned():
    text = leaderboard_text(_leaderboard(), "ioi")
    lines = text.splitlines()
    assert lines[0] == "ioi" and "rank" in lines[1] and "sae-a" in lines[3] and "oracle-sae" in lines[5]
    assert len({len(ln) for ln in lines[1:7]} - {0}) <= 2  # header/rules/rows share columns
    assert "controls:" in lines[-1]
    assert "greater_than" in leaderboard_text(_leaderboard())


def test_write_report_writes_everything_once(tmp_path):
    out = tmp_path / "reports" / "unit-run"
    scores, board = _scores(), _leaderboard()
    assert write_report(out, scores, board, FAILURES, META) == out
    assert is_complete(out)
    expected = {"README.md", "scores.parquet", "leaderboard.parquet", "failures.parquet", MARKER}
    assert expected <= {p.name for p in out.iterdir()}
    pngs = {p.name for p in (out / "plots").iterdir()}
    want = {f"{t}-metrics.png" for t in TASKS} | {f"{t}-f1-heatmap.png" for t in TASKS}
    assert pngs == want
    for name in want:
        assert (out / "plots" / name).read_bytes().startswith(PNG)
    readme = (out / "README.md").read_text()
    for name in want:
        assert f"](plots/{name})" in readme
    assert "**Controls:** ✅" in readme and "broken-sae" in readme
    assert not plt.get_fignums()  # figures closed after saving
    assert not list(out.parent.glob("*.partial-*"))

    s2, b2 = read_report(out)
    assert s2.equals(scores) and b2.equals(board)
    assert read_failures(out).equals(FAILURES)

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert write_report(out, scores, board, FAILURES, META) == out  # an identical rerun reuses the report
    # another evaluation under the same run name is refused in one line, and the first report is kept (item 2)
    with pytest.raises(StoreError, match="already holds another evaluation"):
        write_report(out, scores.head(1), board.head(1), FAILURES.clear(), {**META, "run": "other"})
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_write_report_names_a_violator_and_skips_empty_failures(tmp_path):
    out = tmp_path / "bad"
    write_report(out, _scores(), _leaderboard({**SUMMARY, "sae-a": 0.95}), FAILURES.clear(), META)
    readme = (out / "README.md").read_text()
    assert "**Controls:** ❌" in readme and "sae-a (0.950)" in readme
    assert not (out / "failures.parquet").exists() and read_failures(out).height == 0
    assert "## Failed SAEs\n\nnone" in readme


def test_read_report_on_missing_or_incomplete_dir(tmp_path):
    with pytest.raises(StoreError, match=r"no complete report at .*; run `sage evaluate` first") as e:
        read_report(tmp_path / "nothing")
    assert "\n" not in str(e.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "scores.parquet").write_bytes(b"")
    with pytest.raises(StoreError, match="no complete report"):
        read_report(tmp_path / "half")


def test_nan_summary_is_listed_last_and_not_counted():
    board = _leaderboard().with_columns(
        pl.when(pl.col("sae") == "sae-b").then(float("nan")).otherwise(pl.col("summary")).alias("summary"))
    md = summary_markdown(board, FAILURES.clear(), META)
    ioi = md.split("## ioi")[1].split("## greater_than")[0].split("**Controls:**")[0]  # the leaderboard table
    rows = [ln for ln in ioi.split("Other metrics")[0].splitlines() if ln.startswith("| ") and "rank" not in ln]
    assert [r.split("|")[2].strip() for r in rows[:2]] == ["sae-a", "sae-b"] and rows[1].split("|")[6].strip() == "–"
    holds, text = controls_verdict(board, "ioi")
    assert holds is True and "without a summary" in text
    assert math.isnan(board.filter(pl.col("sae") == "sae-b")["summary"][0])


def _floor_board() -> pl.DataFrame:
    nan = float("nan")
    rows = [  # (sae, kind, summary, EV, sufficiency, necessity, f1_mean, l0, mcc, edit_magnitude_k4)
        ("control:random", "random", 0.3, 0.5, 0.7, 0.4, 0.667, 4.0, 0.2, 0.5),
        ("control:oracle", "oracle", 0.9, 0.1, 1.0, 1.0, 1.0, 3.0, 1.0, 0.0),  # not counted
        ("a", "trained", 0.6, 0.4, 1.2, 0.5, 0.7, 10.0, 0.3, 0.3),
        ("b", "trained", 0.2, 0.6, 1.35, nan, 0.6, 3.0, 0.1, 0.6),  # sufficiency 1.35 is further from 1 than 0.7
        ("c", "trained", 0.3, 0.55, 0.9, 0.45, 0.65, None, 0.25, None),  # a tie is not better
    ]
    cols = ("sae", "kind", "summary", "explained_variance", "sufficiency", "necessity", "f1_mean", "l0", "mcc",
            "edit_magnitude_k4")
    board = pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows], orient="row",
                         schema={c: pl.String if c in ("sae", "kind") else pl.Float64 for c in cols})
    return board.with_columns(task=pl.lit("t"), mapping=pl.lit("native"), status=pl.lit("ok"),
                              ce_loss_recovered=pl.lit(None, pl.Float64))


def test_share_of_trained_saes_above_the_random_control_by_hand():
    from report.controls import random_floor

    t = {r["metric"]: r for r in random_floor(_floor_board()).iter_rows(named=True)}
    want = {"summary": (1, 3), "explained_variance": (2, 3), "sufficiency": (2, 3), "necessity": (2, 2),
            "f1_mean": (1, 3), "l0": (1, 2), "mcc": (2, 3), "edit_magnitude_k4": (1, 2)}
    for metric, (better, n) in want.items():
        assert (t[metric]["n_better"], t[metric]["n_trained"]) == (better, n), metric
        assert t[metric]["share_better"] == pytest.approx(better / n), metric
    assert t["l0"]["better"] == "lower" and t["sufficiency"]["better"] == "closer to 1"
    assert t["summary"]["random"] == pytest.approx(0.3)
    assert t["ce_loss_recovered"]["share_better"] is None and "not measured" in t["ce_loss_recovered"]["note"]
    assert "chance" in t["f1_mean"]["note"]

    md = summary_markdown(_floor_board(), FAILURES.clear(), META)
    assert "| metric | better | random | trained SAEs better | share |" in md
    assert "| summary | higher | 0.300 | 1 of 3 | 33% |" in md
    assert "| necessity | higher | 0.400 | 2 of 2 | 100% |" in md
    # metrics where the control matches or beats more than half the trained SAEs are named
    named = next(ln for ln in md.splitlines() if ln.startswith("The random control matches or beats most"))
    assert "summary (33%)" in named and "f1_mean (33%)" in named
    assert not any(m in named for m in ("explained_variance", "l0", "edit_magnitude_k4", "necessity"))


def test_every_metric_the_random_control_can_match_is_explained():
    """Metrics where the built-in evaluation's random control matched or beat most trained SAEs (l0, edit accuracy,
    edit magnitude) or that chance already satisfies (F1, coverage) carry a note saying why (issue #15 item 10)."""
    from report.controls import CONTROL_NOTES

    for metric in ("l0", "edit_accuracy_k1", "edit_accuracy_k4", "edit_magnitude_k4", "f1_mean", "coverage"):
        assert len(CONTROL_NOTES.get(metric, "")) > 20, metric


def test_report_plots_reads_every_png_checked(tmp_path):
    from storage.reports import report_plots

    out = tmp_path / "r"
    write_report(out, _scores(), _leaderboard(), FAILURES, META)
    plots = report_plots(out)
    assert list(plots) == [f"plots/{t}-{k}.png" for t in TASKS for k in ("metrics", "f1-heatmap")]  # README order
    for name, data in plots.items():
        assert data == (out / name).read_bytes() and data.startswith(PNG)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "readme"])
def test_report_plots_names_a_damaged_plot_in_one_line(tmp_path, damage):
    from storage.reports import report_plots

    out = tmp_path / "r"
    write_report(out, _scores(), _leaderboard(), FAILURES, META)
    p = out / "plots" / "ioi-metrics.png"
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[:100])
    elif damage == "flip":
        p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "delete":
        p.unlink()
    else:
        p = out / "README.md"
        p.write_text(p.read_text() + "edited")
    with pytest.raises(StoreError, match=p.name) as e:
        report_plots(out)
    assert "\n" not in str(e.value) and "rerun" in str(e.value)


def test_report_plots_of_a_missing_report(tmp_path):
    from storage.reports import report_plots

    with pytest.raises(StoreError, match=r"no complete report at .*; run `sage evaluate` first") as e:
        report_plots(tmp_path / "nothing")
    assert "\n" not in str(e.value)


def test_write_report_notes_the_unreached_saes_with_the_scored_hooks(tmp_path):
    out = tmp_path / "u"
    unreached = [{"sae": "blocks.3.hook_resid_pre--topk-64", "task": "ioi", "hook": "blocks.3.hook_resid_pre"}]
    write_report(out, _scores(), _leaderboard(), FAILURES, META, unreached=unreached)
    readme = (out / "README.md").read_text()
    # the hooks ioi's scores hold: both SAE cross-sections, and sae-b's projection at L0.resid_post
    assert ("- ioi (kept cross-sections at L1.attn.z, L1.resid_post, L0.resid_post): 1 SAE not reached; by hook: "
            "L3.resid_pre: 1 (topk-64)") in readme


def test_no_stage_code_version_follows_the_report_wording():
    """The locate stage saves the AtP figure, so its cache key follows report.atp's code: that module imports no
    project module, and the tables the figures use never reach the controls' wording or the leaderboard's code."""
    from storage.hashing import module_closure

    assert module_closure("report.atp") == ("report.atp",)
    reached = module_closure("report.tables", "report.figures")
    assert not {"report.controls", "report.summary", "report.notes", "sage_core.scoring.leaderboard"} & set(reached)


def test_a_task_with_many_saes_gets_pages_of_bounded_figures(tmp_path):
    import polars as pl

    from report.figures import PAGE_ROWS, pages
    from storage.reports import report_plots, write_report

    assert pages(0) == [slice(0, 0)] and pages(3, 2) == [slice(0, 2), slice(2, 4)]
    n = PAGE_ROWS + 5
    board = pl.concat([_leaderboard().filter(pl.col("sae") == _leaderboard()["sae"][0])
                       .with_columns(pl.lit(f"sae-{i:03d}").alias("sae"), pl.lit(i / n).alias("summary"))
                       for i in range(n)])
    scores = pl.concat([_scores().filter(pl.col("sae") == _scores()["sae"][0])
                        .with_columns(pl.lit(f"sae-{i:03d}").alias("sae")) for i in range(n)])
    out = write_report(tmp_path / "r", scores, board, None, {"run": "many"})
    plots = report_plots(out)
    assert [p for p in plots if p.startswith("plots/ioi-")] == [
        "plots/ioi-metrics.png", "plots/ioi-f1-heatmap.png", "plots/ioi-metrics-2.png", "plots/ioi-f1-heatmap-2.png"]
    from PIL import Image

    first, second = (Image.open(out / p) for p in ("plots/ioi-f1-heatmap.png", "plots/ioi-f1-heatmap-2.png"))
    assert second.height < first.height  # 5 rows against 40: each page's size follows its own rows


def test_wide_f1_heatmaps_are_cut_into_legible_parts():
    """IOI's two name attributes (32 values each) and a small one: no part is wider than HEATMAP_COLUMNS, an
    attribute wider than that is cut evenly, small attributes share a part, and every column is in exactly one."""
    from report.figures import HEATMAP_COLUMNS, heatmap_parts

    rows = [dict(sae="a", task="ioi", hook="h", head=None, role="IO", mapping="native", metric=f"f1:{attr}={v}",
                 value=0.5) for attr, n in (("IO", 40), ("S", 10), ("Pos", 2)) for v in range(n)]
    scores = pl.DataFrame(rows, schema={"sae": pl.String, "task": pl.String, "hook": pl.String, "head": pl.Int64,
                                        "role": pl.String, "mapping": pl.String, "metric": pl.String,
                                        "value": pl.Float64})
    parts = heatmap_parts(scores, "ioi")
    assert [len(p) for p in parts] == [20, 20, 12] and all(len(p) <= HEATMAP_COLUMNS for p in parts)
    assert {a for a, _ in parts[2]} == {"S", "Pos"}
    assert sorted(c for p in parts for c in p) == sorted(f1_matrix(scores, "ioi")[1])
    fig = f1_heatmap(scores, "ioi", columns=parts[0], part=" (1 of 3)")
    assert fig.get_size_inches()[0] < 16 and fig.get_suptitle().endswith("(1 of 3)")
    assert len(fig.axes[0].get_xticklabels()) == 20
    plt.close("all")


def test_a_report_writes_a_wide_heatmap_in_parts_and_shows_each(tmp_path):
    """greater_than's 80 years: 3 heatmaps of at most 32 columns (plots/<task>-f1-heatmap[-p2|-p3].png), each in
    the README, none wider than a page."""
    from PIL import Image

    years = [dict(sae=s, task="greater_than", hook="blocks.1.hook_resid_post", head=None, role="END",
                  mapping="native", metric=f"f1:yy={y}", value=0.5) for s in SAES for y in range(10, 90)]
    scores = pl.concat([_scores(), pl.DataFrame(years, schema=_scores().schema)])
    out = write_report(tmp_path / "r", scores, _leaderboard(), FAILURES.clear(), META)
    parts = sorted(p.name for p in (out / "plots").glob("greater_than-f1-heatmap*.png"))
    assert parts == ["greater_than-f1-heatmap-p2.png", "greater_than-f1-heatmap-p3.png",
                     "greater_than-f1-heatmap.png"]
    readme = (out / "README.md").read_text()
    for name in parts:
        assert f"](plots/{name})" in readme
        assert Image.open(out / "plots" / name).size[0] <= 1700
    assert sorted(p.name for p in (out / "plots").glob("ioi-f1-heatmap*.png")) == ["ioi-f1-heatmap.png"]


def test_a_tasks_result_in_one_line_names_its_best_sae_and_the_controls():
    from report.summary import task_result_line

    line = task_result_line(_leaderboard(), "ioi")
    assert line == "ioi: best sae-a, summary 0.600; oracle 0.900, random 0.100; controls hold"
    worse = _leaderboard({**SUMMARY, "sae-b": 0.95})
    assert task_result_line(worse, "ioi").endswith("best sae-b, summary 0.950; oracle 0.900, random 0.100; "
                                                   "controls do not hold")
    none = _leaderboard().with_columns(pl.lit(None, pl.Float64).alias("summary"))
    assert task_result_line(none, "ioi").startswith("ioi: no trained SAE with a summary")
