"""`sage leaderboard`: every SAE ever evaluated, by the latest result for its weights on each task, ranked per model,
task and ground truth."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import render
from flows.cli.options import Home, app, check_top, fail, refused

Model = Annotated[str | None, typer.Option(help="only this model: the label its runs were made with, e.g. sage-tiny "
                                                "or gpt2 (default: every model in the ledger)")]
Task = Annotated[str | None, typer.Option(help="only this task, e.g. ioi (default: every task)")]
Top = Annotated[int | None, typer.Option(help="print only the best N (>= 1) SAEs per table (model, task and ground "
                                              "truth; default: all)")]


@app.command("leaderboard")
def leaderboard_cmd(home: Home = None, model: Model = None, task: Task = None, top: Top = None) -> None:
    """Every SAE ever evaluated (by `sage evaluate` or `sage watch`), on each task by the latest run that scored its
    weights' content hash there (a later run that failed on a task, or did not score it, hides nothing), ranked by
    summary.

    Runs that scored a task against different ground truths (another location search, per_group or task subset: other
    cross-sections and dictionaries) give summaries that are not comparable: each ground truth gets its own table and
    ranking, titled with its key (a hash of its cross-sections' dictionaries) and the runs it shows, the most recent
    run's first. Rank 1 is the best summary; SAEs with equal summaries share the lowest rank of their group (1, 2, 2,
    4); an SAE without a result (failed, or reached no cross-section) is listed under its table, unranked. The oracle
    and random controls of the latest run with that ground truth are the reference lines. Reads the ledger and the
    runs' files; changes nothing.

    Exit codes: 0 shown; 2 nothing to show yet (no ledger, or an empty one: run `sage evaluate` or `sage watch`
    first), or an unknown --model or --task (the line lists the known ones)."""
    check_top(top)
    from storage.boards import across_runs, ledger_evaluations
    from storage.home import SageHome

    h = SageHome(home)
    with refused():
        evaluations = ledger_evaluations(h)
    if evaluations is None or evaluations.is_empty():
        state = "has no ledger" if evaluations is None else "has a ledger with no evaluations"
        fail(f"nothing evaluated yet: {h.root} {state}; run `sage evaluate` or `sage watch` first (or pass the "
             "--home that holds your runs)")
    with refused():
        result = across_runs(h, evaluations, model, task)
    render.across_runs(result, top)
