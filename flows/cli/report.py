"""`sage report`: an evaluation's leaderboard, which tasks ran on its model, and where its report (markdown, parquet,
plots) is."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import render
from flows.cli.options import Home, Top, app, check_run, check_top, console, refused


@app.command("report")
def report_cmd(
    run: Annotated[str | None, typer.Argument(help="run name (default: the latest report)")] = None,
    home: Home = None,
    top: Top = None,
) -> None:
    """Print an evaluation's leaderboard and where its report (markdown, parquet, plots) is."""
    check_top(top)
    check_run(run)
    from storage.home import SageHome
    from storage.reports import latest_report, read_report

    h = SageHome(home)
    with refused():
        where = h.report_dir(run) if run else latest_report(h.reports_root())
        _, board = read_report(where)
    from storage.atomic import StoreError
    from storage.scores import read_run_meta

    try:
        meta = read_run_meta(h.scores_dir(where.name))
    except StoreError:  # a report written before reports linked their run holds its own leaderboard
        meta = {}
    render.run_header(where.name, meta, board)
    render.leaderboard(board, None, top)
    render.task_status(meta.get("model", "the model"), meta.get("task_status", []))
    if meta.get("ground_truth"):  # the ground truth's verdicts, as the report lists them
        import polars as pl

        from report.verdicts import ground_truth_verdicts
        from storage.ground_truth import read_quality

        with refused():
            quality = read_quality(h.root / meta["ground_truth"])
        render.verdicts(ground_truth_verdicts(quality).filter(pl.col("task").is_in(meta.get("tasks", []))))
    if board.is_empty() and meta.get("core"):  # no task ran on the model: its SAEs' core metrics are the result
        render.core_metrics(meta.get("model", "the model"), meta["core"])
    console.print(f"report: {where}/README.md")
