"""The leaderboard across runs, read from disk: the runs' parquet files that the ledger's evaluations name, each read
once and checked against its run's marker, combined by `sage_core.scoring.across`.

Reads only, never writes. A run directory that is missing or damaged is left out and named in a warning line: the
SAEs it scored fall back to their previous result where there is one; a failed evaluation needs no files and stays.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

import polars as pl

from sage_core.scoring import across
from storage.atomic import StoreError
from storage.home import SageHome
from storage.integrity import read_parquet

# scores/<run>/'s files, as `storage.scores.RUN_FILES` names them (importing that module loads TransformerLens, ten
# seconds: too slow for a command that only reads three tables; a test holds the two equal)
RUN_FILES = {"scores": "scores.parquet", "leaderboard": "leaderboard.parquet", "failures": "failures.parquet"}


class AcrossRuns(NamedTuple):
    rows: pl.DataFrame  # `across.combine`'s rows (with each SAE's `hook`), limited to the task asked for
    controls: pl.DataFrame  # `across.controls`: the latest run's oracle / random rows per (model, task)
    warnings: list[str]  # one line per run whose files could not be read


class RunTables(NamedTuple):
    board: pl.DataFrame  # leaderboard.parquet with a `hook` column (a trained SAE's own hook, from its native scores)
    failures: pl.DataFrame  # failures.parquet: sae, stage, error


def read_run_tables(home: SageHome, run: str) -> RunTables:
    """The leaderboard and failures of scores/<run>/, each file checked against the run's marker first; a StoreError
    (or ValueError for a name that is no run name) in one line when the run is missing or damaged."""
    d = home.scores_dir(run)
    files = {what: d / name for what, name in RUN_FILES.items()}
    board = read_parquet(files["leaderboard"], d)
    hooks = (read_parquet(files["scores"], d, columns=["sae", "hook", "mapping"])
             .filter(pl.col("mapping") == "native").select("sae", "hook").unique(subset=["sae"], keep="first",
                                                                                   maintain_order=True))
    board = board.join(hooks, on="sae", how="left", maintain_order="left")
    cols = board.columns
    board = board.select(*cols[:cols.index("sae") + 1], "hook", *(c for c in cols if c not in ("sae", "hook")))
    return RunTables(board, read_parquet(files["failures"], d))


def ledger_evaluations(home: SageHome) -> pl.DataFrame | None:
    """Every evaluation the ledger of `home` records (`storage.ledger.Ledger.evaluations`); None when `home` has no
    ledger yet (none is created: looking never writes one)."""
    from storage.ledger import Ledger

    path = home.ledger_path()
    if not path.is_file():
        return None
    return Ledger(path).evaluations()


def _exists(home: SageHome, run: str) -> bool:
    try:
        return home.scores_dir(run).exists()
    except ValueError:  # not a run name: a ledger row naming no directory SAGE could have written
        return False


def _known(flag: str, name: str, known: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(name, known, n=1)
    return ValueError(f"unknown {flag} {name!r}: {where} {', '.join(known) or 'none'}"
                      + (f" (closest: {close[0]})" if close else ""))


def across_runs(home: SageHome, evaluations: pl.DataFrame, model: str | None = None,
                task: str | None = None) -> AcrossRuns:
    """Every SAE the ledger's `evaluations` (`across.EVALUATION_SCHEMA`) name for `model` (default: every model),
    each by the latest result for its content hash, on `task` (default: every task), ranked per (model, task).

    An unknown model or task is a one-line ValueError listing the known ones. Each run is read at most once; when the
    run holding an SAE's latest result cannot be read, that result is dropped and the one before it stands."""
    evaluations = across.checked_evaluations(evaluations)
    if model is not None:
        models = sorted(evaluations.get_column("model").drop_nulls().unique().to_list())
        if model not in models:
            raise _known("--model", model, models, "the ledger has evaluations for")
        evaluations = evaluations.filter(pl.col("model") == model)
    tables: dict[str, RunTables | None] = {}
    errors: dict[str, str] = {}
    dropped: set[str] = set()
    while True:
        latest = across.latest_per_hash(evaluations)
        for run in latest.get_column("run").unique().sort().to_list():
            if run not in tables:
                try:
                    tables[run] = read_run_tables(home, run)
                except (StoreError, ValueError, OSError) as exc:
                    tables[run], errors[run] = None, " ".join(str(exc).split())
        bad = [r for r, t in tables.items() if t is None]
        lost = (pl.col("status") == "evaluated") & pl.col("run").is_in(bad)
        if evaluations.filter(lost).is_empty():
            break
        dropped |= set(evaluations.filter(lost).get_column("run").to_list())
        evaluations = evaluations.filter(~lost)
    good = {r: t for r, t in tables.items() if t is not None}
    boards = {r: t.board for r, t in good.items()}
    rows = across.combine(latest, boards, {r: t.failures for r, t in good.items()})
    ctrl = across.controls(latest, boards)
    if task is not None:
        tasks = sorted(set(rows.get_column("task").drop_nulls().to_list())
                       | set(ctrl.get_column("task").drop_nulls().to_list()))
        if task not in tasks:
            raise _known("--task", task, tasks, "the runs in the ledger scored")
        # a row without a task (its evaluation failed before any task) is about the SAE, not a task: it stays
        rows = rows.filter((pl.col("task") == task) | pl.col("task").is_null())
        ctrl = ctrl.filter(pl.col("task") == task)
    warnings = [f"run {r} could not be read ({errors[r]}); "
                + ("its results are left out (earlier results of its SAEs stand where there are some)"
                   if r in dropped else "its failures are listed without their reasons")
                for r in sorted(errors) if r in dropped or _exists(home, r)]
    return AcrossRuns(rows, ctrl, warnings)
