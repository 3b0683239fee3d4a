"""The CLI's leaderboard table: the report's rounding (3 decimals), short zoo names, controls kept under --top, a
failed row's reason."""

from __future__ import annotations

import polars as pl

from flows.cli import render

METRICS = ("explained_variance", "sufficiency", "faithfulness", "necessity", "edit_accuracy_k4", "f1_mean", "mcc",
           "ce_loss_recovered", "l0")


def _board() -> pl.DataFrame:
    rows = []
    for sae, kind, summary, status in [("control:oracle", "oracle", 0.9, "ok"), ("control:random", "random", 0.1, "ok"),
                                       ("blocks.0.hook_resid_pre--topk-64", "trained", 0.8707809924535784, "ok"),
                                       ("blocks.0.hook_mlp_out--topk-64", "trained", 0.5, "ok"),
                                       ("broken", "trained", None, "failed: SAE 'broken' has d_in=7")]:
        rows.append({"sae": sae, "task": "ioi", "kind": kind, "mapping": "native" if kind == "trained" else "control",
                     "status": status, "summary": summary, "n_sections": 3, **dict.fromkeys(METRICS, 1.23456)})
    return pl.DataFrame(rows)


def test_leaderboard_rounds_shortens_and_marks(capsys):
    render.leaderboard(_board())
    out = capsys.readouterr().out
    assert "0.871" in out and "0.8707" not in out and "1.235" in out
    assert "L0.resid_pre topk-64" in out and "blocks.0.hook_resid_pre" not in out.split("controls on ioi")[0]
    assert "failed: SAE 'broken' has d_in=7" in out
    assert "controls on ioi:" in out
    lines = [ln for ln in out.splitlines() if "control:oracle" in ln or "topk-64" in ln]
    # the best trained SAE first, the controls after the ranked SAEs, without a rank
    assert lines[0].split()[:2] == ["1", "L0.resid_pre"] and lines[-1].split()[:2] == ["ctrl", "control:oracle"], lines


def test_top_keeps_the_controls(capsys):
    render.leaderboard(_board(), ["ioi"], top=1)
    out = capsys.readouterr().out.split("controls on ioi")[0]
    assert "control:oracle" in out and "control:random" in out and "L0.resid_pre topk-64" in out
    assert "L0.mlp_out" not in out and "broken" not in out
