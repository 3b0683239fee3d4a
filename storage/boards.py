"""The leaderboard across runs, read from disk: the runs' parquet files that the ledger's evaluations name, each read
once and checked against its run's marker, and the ground truth each run scored each task against (from its marker
and the fit flow's ground-truth records), combined by `sage_core.scoring.across`.

Reads only, never writes (the ledger too: `ledger_evaluations`), so it works on a read-only data root. A run directory
that is missing or damaged is left out and named in a warning line: the SAEs it scored fall back to their previous
result where there is one; a failed evaluation needs no files and stays.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

import polars as pl

from sage_core.scoring import across
from storage.atomic import StoreError, read_marker
from storage.home import SageHome
from storage.integrity import read_parquet, read_record_json
from storage.ledger import Ledger

# scores/<run>/'s files, as `storage.scores.RUN_FILES` names them (importing that module loads TransformerLens, ten
# seconds: too slow for a command that only reads three tables; a test holds the two equal)
RUN_FILES = {"scores": "scores.parquet", "leaderboard": "leaderboard.parquet", "failures": "failures.parquet"}


class AcrossRuns(NamedTuple):
    rows: pl.DataFrame  # `across.combine`'s rows (with each SAE's `hook`), limited to the task asked for
    controls: pl.DataFrame  # `across.controls`: per (model, task, ground truth) its latest run's oracle / random rows
    warnings: list[str]  # one line per run whose files could not be read, or ground truth whose parts could not be
    groups: pl.DataFrame  # `across.ground_truth_groups`: the tables to show, the most recent ground truth first
    # per model, from its latest run: each task that did not run there and why (not posed, not done)
    not_run: tuple[str, ...] = ()


class RunTables(NamedTuple):
    board: pl.DataFrame  # leaderboard.parquet with a `hook` column (a trained SAE's own hook, from its native scores)
    failures: pl.DataFrame  # failures.parquet: sae, stage, error
    ground_truth: str | None  # the marker's `ground_truth`: its GroundTruthRef's path under SAGE_HOME (None: no such)
    task_status: tuple[dict, ...] = ()  # the marker's `task_status`: which tasks ran on the run's model, and why not


def read_run_tables(home: SageHome, run: str) -> RunTables:
    """The leaderboard and failures of scores/<run>/, each file checked against the run's marker first; a StoreError
    (or ValueError for a name that is no run name) in one line when the run is missing or damaged, naming the
    evaluation to rerun (it rebuilds the run: `storage.scores.refuse_other_run`)."""
    try:
        return _run_tables(home, run)
    except StoreError as exc:  # rerunning `sage leaderboard` rebuilds nothing: the evaluation that wrote it does
        what = str(exc).split("; rerun the command")[0]
        raise StoreError(f"{what}; rerun the `sage evaluate` (or watch run) that wrote run {run}, with the same "
                         "options: it rebuilds it") from exc


def _run_tables(home: SageHome, run: str) -> RunTables:
    d = home.scores_dir(run)
    files = {what: d / name for what, name in RUN_FILES.items()}
    board = read_parquet(files["leaderboard"], d)
    hooks = (read_parquet(files["scores"], d, columns=["sae", "hook", "mapping"])
             .filter(pl.col("mapping") == "native").select("sae", "hook").unique(subset=["sae"], keep="first",
                                                                                   maintain_order=True))
    board = board.join(hooks, on="sae", how="left", maintain_order="left")
    cols = board.columns
    board = board.select(*cols[:cols.index("sae") + 1], "hook", *(c for c in cols if c not in ("sae", "hook")))
    marker = read_marker(d)
    gt, status = marker.get("ground_truth"), marker.get("task_status")
    return RunTables(board, read_parquet(files["failures"], d), gt if isinstance(gt, str) and gt else None,
                     tuple(r for r in status if isinstance(r, dict)) if isinstance(status, list) else ())


def _parts_by_task(manifest: object) -> tuple[str, dict[str, list[str]]] | None:
    """A recorded GroundTruthRef (as `storage.refs.dump` wrote it) -> (its path, its parts' hashes per task); None
    for anything else or a part without a task and hash."""
    if not isinstance(manifest, dict) or manifest.get("ref") != "ground-truth" or not isinstance(
            manifest.get("path"), str) or not isinstance(manifest.get("parts", []), list):
        return None
    by_task: dict[str, list[str]] = {}
    for p in manifest.get("parts", []):
        if not (isinstance(p, dict) and p.get("ref") == "ground-truth-part" and isinstance(p.get("task"), str)
                and isinstance(p.get("hash"), str) and p["hash"]):
            return None
        by_task.setdefault(p["task"], []).append(p["hash"])
    return manifest["path"], by_task


def recorded_ground_truths(home: SageHome) -> dict[str, dict[str, list[str]]]:
    """Per ground-truth path (a GroundTruthRef's `path`, as a run's marker names it): its parts' content hashes per
    task, from the fit flow's records (`storage.ground_truth.write_gt_record`) that verify (`ground_truth_records`)."""
    return ground_truth_records(home)[0]


# what to do about a ground-truth record that does not verify, seen from `sage leaderboard`
GT_RECORD_FIX = ("it is not used (the runs that scored against its ground truth are keyed by that path); rerun `sage "
                 "fit` or `sage evaluate` for its model to rewrite it")


def ground_truth_records(home: SageHome) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """`recorded_ground_truths`, and one line per record that does not verify (unreadable, edited since it was
    written, or without a checksum: `storage.integrity.read_record_json`), which is left out rather than read as fact.
    Read as JSON, not through `storage.records` (whose `storage.refs` loads TransformerLens). The parts' directories
    need not still exist: their hashes name them, and the record's checksum vouches for the hashes."""
    d = home.ground_truth_record("_").parent
    out: dict[str, dict[str, list[str]]] = {}
    problems: list[str] = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = read_record_json(p, GT_RECORD_FIX)
        except StoreError as exc:
            problems.append(" ".join(str(exc).split()))
            continue
        found = _parts_by_task(rec["manifest"])
        if found is not None:
            out.setdefault(found[0], found[1])
    return out, problems


def ground_truth_keys(home: SageHome, tables: dict[str, RunTables]) -> tuple[pl.DataFrame, list[str]]:
    """Per (run, task) of each run's board (`across.GROUND_TRUTH_SCHEMA`): the key of the ground truth it scored that
    task against, `across.ground_truth_key` of the parts of that task in the GroundTruthRef its marker names. Where
    those parts cannot be read, the marker's `ground_truth` path itself (or "run:<run>" for a marker naming none:
    ranked only among itself), with a warning line per such path, after one per ground-truth record that does not
    verify."""
    recorded, problems = ground_truth_records(home) if tables else ({}, [])
    rows: list[dict[str, str]] = []
    unread: dict[str | None, list[str]] = {}
    for run, t in sorted(tables.items()):
        parts = recorded.get(t.ground_truth) if t.ground_truth else None
        if parts is None:
            unread.setdefault(t.ground_truth, []).append(run)
        for task in t.board.get_column("task").drop_nulls().unique().sort().to_list():
            key = (across.ground_truth_key(parts.get(task, [])) if parts is not None
                   else t.ground_truth or f"run:{run}")
            rows.append({"run": run, "task": task, "ground_truth": key})
    where = home.relative(home.ground_truth_record("_").parent)
    warnings = problems + [
        f"run(s) {', '.join(runs)}: the parts of ground truth {gt} could not be read (no verified record under {where} "
        f"names it); their results are keyed by that path, so runs that used the same cross-sections may be shown "
        f"apart" if gt else
        f"run(s) {', '.join(runs)} record no ground truth in their marker (written by an older SAGE); each run's "
        f"results are ranked only among themselves"
        for gt, runs in sorted(unread.items(), key=lambda kv: kv[1])]
    return pl.DataFrame(rows, schema=across.GROUND_TRUTH_SCHEMA), warnings


def ledger_evaluations(home: SageHome) -> pl.DataFrame | None:
    """Every evaluation the ledger of `home` records, read through a read-only `storage.ledger.Ledger` (it writes
    nothing under the data root, so `sage leaderboard` works on a read-only one, and a damaged ledger is a one-line
    LedgerError, never "nothing evaluated"); None when `home` has no ledger yet (none is created: looking never writes
    one)."""
    path = home.ledger_path()
    if not path.is_file():
        return None
    return Ledger(path, read_only=True).evaluations()


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
    """Every SAE the ledger's `evaluations` (`across.EVALUATION_SCHEMA`) name for `model` (default: every model), on
    `task` (default: every task), each by the latest result for its content hash on that task, ranked per (model,
    task, ground truth).

    An unknown model or task is a one-line ValueError listing the known ones. Every run the evaluations name is read
    once (an older run may hold the only result on a task); a run that cannot be read is left out, and the SAEs it
    scored keep their results from other runs."""
    evaluations = across.checked_evaluations(evaluations)
    if model is not None:
        models = sorted(evaluations.get_column("model").drop_nulls().unique().to_list())
        if model not in models:
            raise _known("--model", model, models, "the ledger has evaluations for")
        evaluations = evaluations.filter(pl.col("model") == model)
    tables: dict[str, RunTables] = {}
    errors: dict[str, str] = {}
    for run in evaluations.get_column("run").drop_nulls().unique().sort().to_list():
        try:
            tables[run] = read_run_tables(home, run)
        except (StoreError, ValueError, OSError) as exc:
            errors[run] = " ".join(str(exc).split())
    # a result whose run cannot be read is dropped (a failure needs no files: it stays, without its reason)
    lost = (pl.col("status") == "evaluated") & pl.col("run").is_in(sorted(errors))
    dropped = set(evaluations.filter(lost).get_column("run").to_list())
    evaluations = evaluations.filter(~lost)
    ground_truths, gt_warnings = ground_truth_keys(home, tables)
    boards = {r: t.board for r, t in tables.items()}
    rows = across.combine(evaluations, boards, {r: t.failures for r, t in tables.items()}, ground_truths)
    ctrl = across.controls(evaluations, boards, ground_truths)
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
    return AcrossRuns(rows, ctrl, warnings + gt_warnings, across.ground_truth_groups(rows, ctrl),
                      _not_run(evaluations, tables))


def _not_run(evaluations: pl.DataFrame, tables: dict[str, RunTables]) -> tuple[str, ...]:
    """Per model, the tasks its latest readable run did not score, each with why (`task_status` lines)."""
    from sage_core.prompts.task_status import TaskStatus

    out = []
    latest = (evaluations.filter(pl.col("run").is_in(list(tables))).sort("evaluated_at")
              .group_by("model", maintain_order=True).agg(pl.col("run").last()))
    for model, run in latest.sort("model").iter_rows():
        for r in tables[run].task_status:
            try:
                s = TaskStatus.model_validate(r)
            except ValueError:
                continue
            if not s.runs:
                out.append(f"{s.line(model)} (run {run})")
    return tuple(out)
