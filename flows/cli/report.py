"""`sage report`: an evaluation's leaderboard, and where its report (markdown, parquet, plots) is."""

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
    render.leaderboard(board, None, top)
    console.print(f"report: {where}/README.md")
