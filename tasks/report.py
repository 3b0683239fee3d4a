"""Closing an evaluation: the ground truth's verdicts, the leaderboard and run files (scores/<run>/), the report
(reports/<run>/), and the Prefect artifacts that show them in the UI.

The leaderboard and the report are cached like every stage (their key: what was scored, the run's name and this
code; a hit is taken only while the directory is whole), and storage keys them on the run's identity too (`run_key`):
an identical rerun reuses them, another evaluation under the same name is refused. The verdicts (a cheap read) and
the artifacts (published for every run, so "latest" always names the last one) are not cached.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from report.artifacts import artifact_key, latest_key, leaderboard_rows, plots_markdown
from report.summary import artifact_summary, task_result_line
from report.tables import task_names
from report.verdicts import VERDICT_SCHEMA, ground_truth_verdicts, verdict_line
from sage_core.scoring.leaderboard import leaderboard
from sage_core.scoring.rows import score_frame
from storage import scores as sc_store
from storage.ground_truth import read_quality
from storage.home import SageHome
from storage.records import dir_ref
from storage.refs import CoreRef, GroundTruthRef, ModelRef, ReportRef, RunRef, ScorePartRef
from storage.reports import read_readme, report_plots, write_report
from tasks.common import UNCACHED, log, output_key, stage_options

UNIT_SCHEMA = {"sae": pl.String, "task": pl.String, "kind": pl.String, "mapping": pl.String, "status": pl.String}
FAILURE_SCHEMA = {"sae": pl.String, "stage": pl.String, "error": pl.String}
CE_COLUMNS = ("ce_clean", "ce_with_sae", "ce_zero_ablation")  # inputs of ce_loss_recovered, not leaderboard columns


def _n_tasks(parameters: dict) -> str:
    n = len(parameters["tasks"])
    return f"verdicts {n} task{'s' if n != 1 else ''}"


def _leaderboard_name(parameters: dict) -> str:
    """`leaderboard <run>`, or, for a run named by its results, its model and how many SAEs it scores."""
    if parameters.get("run"):
        return f"leaderboard {parameters['run']}"
    n = parameters.get("n_saes", 0)
    return f"leaderboard {parameters.get('model_label', '')}, {n} SAE{'s' if n != 1 else ''}"


@task(name="verdicts", task_run_name=_n_tasks, **UNCACHED)
def judge_ground_truth(ground_truth: GroundTruthRef | None, tasks: list[str], home: str) -> list[dict[str, Any]]:
    """Per (task, attribute): does any kept cross-section's dictionary meet the quality bar, and if not, why (none
    where no task ran)."""
    if ground_truth is None:
        return []
    quality = read_quality(SageHome(home).at(ground_truth))
    return ground_truth_verdicts(quality).filter(pl.col("task").is_in(tasks)).to_dicts()


def run_key(model: ModelRef, ground_truth: GroundTruthRef | None, parts: list[ScorePartRef], core: list[CoreRef],
            failures: list[dict[str, str]], corpus: dict[str, Any] | None = None,
            task_status: list[dict[str, Any]] | None = None) -> str:
    """What a run scored: the model, the ground truth, every scoring part and core metric by content (and the text
    of the core metrics), and what failed (not the wording of its error, which may name a temporary path or a hub's
    passing state)."""
    return output_key("evaluate", dict(model=model, ground_truth=ground_truth.hash if ground_truth else None, parts=sorted(p.hash for p in parts),
                                       failures=sorted((f["sae"], f["stage"]) for f in failures),
                                       core=sorted((c.sae, c.hash) for c in core), corpus=corpus,
                                       # which tasks ran: a run where none did is still told apart by them
                                       tasks=sorted((r["task"], r["status"]) for r in task_status or ())),
                      ("tasks.report",))


@task(name="leaderboard", task_run_name=_leaderboard_name, **stage_options())
def write_run_files(run: str | None, model: ModelRef, model_label: str, ground_truth: GroundTruthRef | None,
                    tasks: list[str], n_saes: int, parts: list[ScorePartRef], units: list[dict[str, str]],
                    core: list[CoreRef], failures: list[dict[str, str]], home: str, corpus: dict[str, Any] | None = None,
                    task_status: list[dict[str, Any]] | None = None) -> RunRef:
    """The leaderboard of the scored parts, the unit statuses and the core metrics -> scores/<run>/ (scores,
    leaderboard, failures; the run's description in its marker, with `corpus`: the text of the core metrics, and
    `task_status`: which tasks ran on the model and why the others did not). `run`
    None: named `run-<key>` by what was scored. An SAE that failed to load gets a failed row on every task."""
    h = SageHome(home)
    key = run_key(model, ground_truth, parts, core, failures, corpus, task_status)
    run = run or f"run-{key[:12]}"
    scores = pl.concat([sc_store.read_part(h.at(p)) for p in parts]) if parts else score_frame([])
    units = [*units, *({"sae": f["sae"], "task": t, "kind": "trained", "mapping": "native",
                        "status": f"failed: {f['error']}"} for f in failures if f["stage"] == "load" for t in tasks)]
    # the numbers from the checked files, never from a reference (a cache record holds none)
    core_rows = [{"sae": c.sae, **sc_store.read_core(h.at(c))} for c in core]
    core_df = pl.DataFrame(core_rows)
    board = leaderboard(scores, pl.DataFrame(units, schema=UNIT_SCHEMA),
                        core_df.drop([c for c in CE_COLUMNS if c in core_df.columns]))
    meta = {"run": run, "run_key": key, "model": model_label, "model_hash": model.hash, "tasks": tasks,
            "n_saes": n_saes, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "ground_truth": ground_truth.path if ground_truth else None,
            **({"corpus": corpus} if corpus else {}), **({"task_status": task_status} if task_status else {}),
            # the core metrics of every SAE, also where no task ran (the leaderboard then has no rows)
            "core": core_rows}
    d = sc_store.write_run(h.scores_dir(run), scores, board, pl.DataFrame(failures, schema=FAILURE_SCHEMA), meta)
    return dir_ref(h, RunRef, d, run=run)


def _verdict_frame(verdicts: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(verdicts, schema=VERDICT_SCHEMA)


@task(name="report", task_run_name="report {run.run}", **stage_options())
def write_run_report(run: RunRef, verdicts: list[dict[str, Any]], unreached: list[dict[str, str]],
                     home: str) -> ReportRef:
    """reports/<run>/: README.md (tables, controls, ground-truth verdicts, failed and unreached SAEs) and plots; the
    run's parquet tables stay in scores/<run>/, which the README links."""
    h = SageHome(home)
    scores, board, failures = sc_store.read_run(h.at(run))
    d = write_report(h.report_dir(run.run), scores, board, failures, sc_store.read_run_meta(h.at(run)),
                     _verdict_frame(verdicts), unreached=unreached, tables=h.at(run))
    return dir_ref(h, ReportRef, d, run=run.run)


@task(name="publish", task_run_name="publish {run.run}", **UNCACHED)
def publish_run(run: RunRef, report: ReportRef, verdicts: list[dict[str, Any]], home: str) -> list[str]:
    """The run in the Prefect UI: the leaderboard table (per task ranked: rank, n, the summary and its parts), the summary and the
    plots, each under this run's key and under a stable "latest" key; the flow run is named after the run. The summary
    is the report's README as written (`verdicts` and `unreached` were its inputs), never built a second time."""
    h = SageHome(home)
    board = sc_store.read_run_table(h.at(run), "leaderboard")
    summary = artifact_summary(read_readme(h.at(report)), where=str(h.at(report)))
    plots = plots_markdown(report_plots(h.at(report)), where=str(h.at(report)))
    keys = []
    for what in ("leaderboard", "summary", "plots"):
        for key in (artifact_key(run.run, what), latest_key(what)):
            if what == "leaderboard":
                create_table_artifact(key=key, table=leaderboard_rows(board),
                                      description=f"SAGE leaderboard, run {run.run}")
            else:
                create_markdown_artifact(key=key, markdown=summary if what == "summary" else plots,
                                         description=f"SAGE evaluation {what}, run {run.run}")
            keys.append(key)
    _name_flow_run(run.run)
    # what happened, for the flow's log and state message: one line per task, the ground truth's verdicts, the report
    return [*(task_result_line(board, task) for task in task_names(board)),
            *(f"ground truth {v['task']} {verdict_line(v)}" for v in _verdict_frame(verdicts).iter_rows(named=True)),
            f"report: {h.at(report) / 'README.md'} (Prefect artifacts {', '.join(keys[::2])})"]


def _name_flow_run(name: str) -> None:
    """Name the flow run after the run: a run named by its results is only named once they are in."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    # only the placeholder (`flows.evaluate.flow_run_name`): a name given by the caller (a watch names its evaluations
    # after the SAEs they score) stays
    if flow_run.id is None or flow_run.name == name or not str(flow_run.name).endswith("(named when scored)"):
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run_id=flow_run.id, name=name)
    log().info(f"flow run {flow_run.name!r} renamed {name!r}")
