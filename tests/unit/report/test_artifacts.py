"""What the evaluation publishes to the Prefect UI: the table artifact's rows, the artifact keys, the plots' markdown."""

from __future__ import annotations

import base64
import json
import re

import polars as pl
import pytest

from report.artifacts import (
    ARTIFACT_COLUMNS,
    LATEST_KEYS,
    MAX_EMBEDDED_BYTES,
    artifact_key,
    latest_key,
    leaderboard_rows,
    plots_markdown,
)

PNG = b"\x89PNG\r\n\x1a\n"
KEY = re.compile(r"^[a-z0-9-]+$")  # prefect.types.names: lowercase letters, numbers and dashes only
# the report's ranked table's headers; no `kind` (a control is named control:..., unranked, mapping `control`)
COLUMNS = ["task", "rank", "sae", "mapping", "n", "summary", "faith.", "nec.", "gain@4", "F1", "MCC", "status"]


def _board() -> pl.DataFrame:
    return pl.DataFrame([
        dict(sae="blocks.0.hook_resid_pre--topk-64", task="ioi", kind="trained", mapping="native", status="ok",
             n_sections=3, summary=0.8707809924535784, explained_variance=0.91234, l0=12.3456, sufficiency=1.2149,
             faithfulness=1.0004, necessity=float("nan"), edit_accuracy_k4=None, f1_mean=0.66666666, mcc=0.1,
             ce_loss_recovered=-0.00049, kl=0.5, oracle_same=0.9),
        dict(sae="x", task="ioi", kind="trained", mapping="native", status="failed: ValueError: boom", n_sections=0,
             summary=None, explained_variance=None, l0=None, sufficiency=None, faithfulness=None, necessity=None,
             edit_accuracy_k4=None, f1_mean=None, mcc=None, ce_loss_recovered=None, kl=None, oracle_same=None),
    ], schema_overrides={"necessity": pl.Float64, "edit_accuracy_k4": pl.Float64})


def test_leaderboard_rows_are_rounded_complete_and_in_order():
    rows = leaderboard_rows(_board())
    assert [c for _, c in ARTIFACT_COLUMNS] == COLUMNS
    assert [list(r) for r in rows] == [COLUMNS, COLUMNS]  # kl, oracle_same, EV: in the report, not this table
    a, b = rows
    assert a["rank"] == 1 and a["sae"] == "L0.resid_pre topk-64"  # short names
    assert a["summary"] == 0.871 and a["faith."] == 1.0 and a["F1"] == 0.667 and a["MCC"] == 0.1
    assert a["n"] == 3 and isinstance(a["n"], int)
    assert a["nec."] is None and a["gain@4"] is None  # NaN and missing: an empty cell, never NaN
    # the status says whether it failed (its error is in the summary artifact's failures: a narrow column)
    assert a["status"] == "ok" and b["status"] == "failed" and b["summary"] is None and b["n"] == 0 and b["rank"] == 2
    for v in (x for r in rows for x in r.values() if isinstance(x, float)):
        assert len(repr(v).split(".")[-1]) <= 3, v  # never 0.8707809924535784
    json.dumps(rows, allow_nan=False)  # a table artifact is JSON


def test_each_task_is_ranked_apart_with_the_controls_after_its_saes():
    board = pl.DataFrame([dict(sae=s, task=t, kind=k, mapping="native", status="ok", n_sections=1, summary=v)
                          for t in ("ioi", "sva") for s, k, v in (("control:oracle", "oracle", 0.9), ("a", "trained", 0.2),
                                                                   ("b", "trained", 0.5), ("control:random", "random", 0.1))])
    rows = leaderboard_rows(board)
    assert [(r["task"], r["rank"], r["sae"]) for r in rows] == [
        (t, rank, s) for t in ("ioi", "sva")
        for rank, s in ((1, "b"), (2, "a"), (None, "control:oracle"), (None, "control:random"))]


def test_leaderboard_rows_agree_with_the_markdown_report():
    from report.tables import fmt

    board = _board()
    row = leaderboard_rows(board)[0]
    for col, head in (("summary", "summary"), ("faithfulness", "faith."), ("f1_mean", "F1"), ("mcc", "MCC")):
        assert fmt(board[col][0]) == f"{row[head]:.3f}", col


def test_leaderboard_rows_without_a_metric_column_and_without_sae():
    rows = leaderboard_rows(_board().drop("faithfulness"))
    assert all(r["faith."] is None for r in rows)
    with pytest.raises(ValueError, match="lacks sae") as e:
        leaderboard_rows(_board().drop("sae"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("run", ["default", "My Run", "run/../../etc", "RUN", "run--2", "a_b", " spaced ", "日本語",
                                 "x" * 300, "-lead-", "latest", "run-abc"])
def test_artifact_keys_are_valid_for_hostile_run_names(run):
    for what in LATEST_KEYS:
        key = artifact_key(run, what)
        assert KEY.match(key), key
        assert key.startswith(latest_key(what) + "-run-") and key != latest_key(what)
        assert len(key) <= 100
    assert artifact_key("default", "leaderboard") == "sae-leaderboard-run-default"  # a plain name is kept as it is


def test_artifact_keys_of_colliding_run_names_differ():
    runs = ["My Run", "my-run", "my run", "MY_RUN", "my--run", "my-run-", "My Run ", "x" * 60, "x" * 61,
            "x" * 48 + "-y", "latest", "Latest", "run-1", "run_1", "日本", "中文", "", "a"]
    runs = [r for r in runs if r]
    for what in LATEST_KEYS:
        keys = [artifact_key(r, what) for r in runs]
        assert len(set(keys)) == len(keys), keys
        assert latest_key(what) not in keys
    every = [artifact_key(r, w) for r in runs for w in LATEST_KEYS] + [latest_key(w) for w in LATEST_KEYS]
    assert len(set(every)) == len(every)  # nor across artifacts
    # a name that looks like another's hashed slug still gets its own key
    hashed = artifact_key("My Run", "summary").split("-run-", 1)[1]
    assert artifact_key(hashed, "summary") != artifact_key("My Run", "summary")


def test_artifact_key_refuses_unknown_artifacts_and_empty_runs():
    with pytest.raises(ValueError, match="unknown artifact 'scores': use one of leaderboard, summary, plots"):
        artifact_key("r", "scores")
    with pytest.raises(ValueError, match="unknown artifact"):
        latest_key("Leaderboard")
    with pytest.raises(ValueError, match="non-empty"):
        artifact_key("", "summary")


def _png(n: int = 40) -> bytes:
    return PNG + bytes(range(256)) * (n // 256 + 1)


def test_plots_markdown_embeds_each_png_under_its_name():
    plots = {"plots/ioi-metrics.png": _png(), "plots/ioi-f1-heatmap.png": _png(600)}
    md = plots_markdown(plots, where="/data/reports/r1")
    assert md.startswith("# SAGE plots") and "`/data/reports/r1`" in md
    for name, data in plots.items():
        short = name.split("/")[-1].removesuffix(".png")
        assert f"## {short}" in md and f"`{name}`" in md
        assert f"![{short}](data:image/png;base64,{base64.b64encode(data).decode()})" in md
    assert md.index("ioi-metrics") < md.index("ioi-f1-heatmap")  # in the order given
    assert "No plots" in plots_markdown({})


def test_plots_markdown_lists_what_exceeds_the_budget_and_refuses_non_png():
    big = PNG + b"\0" * (MAX_EMBEDDED_BYTES - 100)
    md = plots_markdown({"plots/a.png": big, "plots/b.png": _png(), "plots/c.png": _png(200)})
    assert md.count("data:image/png;base64,") == 1  # a.png fits, b.png would not: listed, c.png too
    assert "Too large to show here" in md and "`plots/b.png`" in md
    with pytest.raises(ValueError, match="'plots/x.svg' is not a PNG"):
        plots_markdown({"plots/x.svg": b"<svg/>"})
    odd = plots_markdown({"plots/a](evil).png": _png()})
    assert "![a_(evil)](data:" in odd  # the name cannot close the image's alt text


def test_short_names_of_zoo_saes_and_projected_units():
    from report.tables import short_sae

    assert short_sae("blocks.0.hook_resid_pre--topk-64") == "L0.resid_pre topk-64"
    assert short_sae("topk-64:projection[L0.resid_mid->L0.resid_post]") == "L0.resid_mid→L0.resid_post topk-64"
    assert short_sae("jumprelu-256:difference[L1.resid_pre->L1.resid_mid]") == "L1.resid_pre→L1.resid_mid jumprelu-256"
    for name in ("control:oracle", "gpt2-small-res-jb/blocks.8.hook_resid_pre", "a:b[c]"):
        assert short_sae(name) == name
