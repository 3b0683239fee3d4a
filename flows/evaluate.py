"""Flow `evaluate`: model x tasks x SAEs -> scores/<run>/ and reports/<run>/.

zoo (built if missing) -> locate + fit the ground truth (subflow `fit`) -> resolve and check every SAE -> plan the
scoring units -> per task: one role-position capture of every hook its cross-sections and SAEs need, and the
cross-sections' references -> one mapped `score-unit` per (SAE or projected pair or control) x task, and
`core-metrics` per SAE -> verdicts, leaderboard and run files, report, Prefect artifacts.

Every compute task is cached on the content hashes of its inputs, so adding one SAE to an evaluated set runs only that
SAE's scoring (and its core metrics): no capture, location search or fit is repeated. A failing SAE is reported as
failed and the rest of the run completes. The flow only wires tasks; what failed where is its bookkeeping.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build_zoo import build_zoo, zoo_if_whole
from flows.fit import fit_ground_truth, ground_truth_if_whole
from flows.pretrained import prepare_pretrained
from flows.settings import results_in
from sage_core.config import EvaluateConfig
from storage import scores as sc_store
from storage.atomic import StoreError
from storage.home import SageHome
from storage.sae_sources import list_zoo_saes
from tasks import capture as ct
from tasks import progress
from tasks import report as rt
from tasks.common import ManifestSerializer, in_home
from tasks.plan import check_inputs, plan_scoring
from tasks.score import resolve_sae, sae_core_metrics, score_unit, section_references

TASKS = (resolve_sae, plan_scoring, ct.prepare_capture, section_references, score_unit, sae_core_metrics,
         rt.judge_ground_truth, rt.write_run_files, rt.write_run_report, rt.publish_run)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def flow_run_name() -> str:
    """The run's name when given; otherwise a placeholder until the results name the run (`publish` renames it)."""
    from prefect.runtime import flow_run

    return flow_run.parameters.get("run") or "evaluate (named when scored)"


def _settle(futures: list) -> list[State]:
    for f in futures:
        f.wait()
    return [f.state for f in futures]


def _error(state: State) -> BaseException:
    return state.result(raise_on_failure=False)


def _kept(labels: list[str], futures: list, stage: str, failures: list[dict[str, str]]) -> list:
    """The results of the task runs that completed; each one that did not is a failure of `stage` under its label."""
    out = []
    for label, state in zip(labels, _settle(futures), strict=True):
        if state.is_completed():
            out.append(state.result())
        else:
            failures.append({"sae": label, "stage": stage, "error": one_line(_error(state))})
    return out


@flow(name="evaluate", flow_run_name=flow_run_name, task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True,
      result_serializer=ManifestSerializer())
def evaluate(cfg: EvaluateConfig = EvaluateConfig(), home: str | None = None, run: str | None = None):
    """Returns the run's outputs (paths relative to SAGE_HOME where they are records); when any SAE or stage failed,
    after every good result is written, the flow run ends Failed with the count in its message (data: the same)."""
    h = SageHome(home)
    h.ensure_writable()  # a data root that cannot take the results fails now, not after the compute
    check_inputs(cfg, h, run)  # a spec that names nothing fails before any work
    zcfg = cfg.model_zoo()
    root, name, tasks = str(h.root), zcfg.model.name, list(cfg.tasks or zcfg.tasks)
    t = {task.name: in_home(task, h) for task in TASKS}
    if cfg.pretrained:
        zoo = prepare_pretrained(pretrained=cfg.pretrained, cfg=zcfg, home=root)
    else:
        zoo = zoo_if_whole(zcfg, h) or build_zoo(cfg=zcfg, home=root)
    gt = (ground_truth_if_whole(zcfg, cfg.locate, h, cfg.per_group, tasks=tasks)
          or fit_ground_truth(cfg=zcfg, locate_cfg=cfg.locate, home=root, per_group=cfg.per_group, tasks=tasks))
    failures: list[dict[str, str]] = []

    specs = list(cfg.saes) or [f"zoo:{n}" for n in list_zoo_saes(h, name)]
    saes = _kept(specs, t["resolve-sae"].map(specs, unmapped(zoo.model), unmapped(name), unmapped(root)), "load",
                 failures)
    plan = t["plan-units"](saes, gt, tasks, zoo.model, cfg, root)
    failures += [{"sae": "*", "stage": "fit", "error": f"task {e}: no cross-section was kept"} for e in plan.empty]

    jobs = []  # (unit, dataset, store, references)
    for tp in plan.tasks:
        ds = zoo.dataset(tp.task)
        prep = t["prepare-capture"](zoo.model, ds, tp.request, root)
        progress.begin("capture", prep.n_chunks)
        shard = ct.capture_shard(prep, zoo.model, ds, tp.request, 0, 1, root)
        sealed = ct.finalize_capture(prep, ds, [shard], root, return_state=True)
        progress.end("capture")
        if not sealed.is_completed():  # a damaged store is the store's fault: no SAE is scored on it, none is blamed
            failures.append({"sae": "*", "stage": f"capture {tp.task}", "error": one_line(_error(sealed))})
            continue
        store = sealed.result()
        refs = t["section-references"](zoo.model, ds, store, list(tp.parts), cfg.score.max_test, zoo.corpus,
                                       cfg.core_sequences, root)
        jobs += [(u, ds, store, refs) for u in tp.units]

    progress.begin("score", len(jobs))
    progress.begin("core", len(saes))
    units, datasets, stores, refs = (list(c) for c in zip(*jobs, strict=True)) if jobs else ([], [], [], [])
    scored = t["score-unit"].map(units, unmapped(zoo.model), datasets, stores, refs, unmapped(name),
                                 unmapped(cfg.score), unmapped(root))
    cored = t["core-metrics"].map(saes, unmapped(zoo.model), unmapped(zoo.corpus), unmapped(cfg.core_sequences),
                                  unmapped(name), unmapped(root))
    parts, statuses = [], []
    for u, ds, state in zip(units, datasets, _settle(scored), strict=True):
        error = None if state.is_completed() else _error(state)
        statuses.append({"sae": u.name, "task": ds.task, "kind": u.kind, "mapping": u.mapping,
                         "status": "ok" if error is None else f"failed: {one_line(error)}"})
        if error is None:
            parts.append(state.result())
        elif isinstance(error, StoreError):  # a damaged input (store, references, ground truth): never the SAE's fault
            failures.append({"sae": "*", "stage": f"input of {u.name} on {ds.task}", "error": one_line(error)})
        else:
            failures.append({"sae": u.name, "stage": f"score {ds.task}", "error": one_line(error)})
    progress.end("score")
    core = _kept([s.name for s in saes], cored, "core", failures)
    progress.end("core")

    verdicts = t["verdicts"](gt, tasks, root)
    run_ref = t["leaderboard"](run, zoo.model, cfg.pretrained or name, gt, tasks, len(specs), parts, statuses, core,
                               failures, root)
    report = t["report"](run_ref, verdicts, list(plan.unreached), root)
    t["publish"](run_ref, report, verdicts, list(plan.unreached), root)
    return _outputs(h, cfg, tasks, zoo, gt, run_ref, report, verdicts, plan, failures)


def _outputs(h: SageHome, cfg: EvaluateConfig, tasks: list[str], zoo, gt, run_ref, report, verdicts, plan,
             failures: list[dict[str, str]]) -> dict[str, Any] | State:
    files = sc_store.run_files(h.at(run_ref))
    out = {"run": run_ref.run, "scores": str(files["scores"]), "leaderboard": str(files["leaderboard"]),
           "report": str(h.at(report)), "n_failed": len(failures), "ground_truth": gt.path,
           "unreached": list(plan.unreached),
           "sections": {t: sorted({p.section.hook for p in gt.of_task(t)}) for t in tasks},
           "model_eval": [r for r in zoo.model_eval.rows if r["task"] in tasks] if cfg.pretrained else [],
           "verdicts": verdicts}
    if not failures:
        return out
    # Failed, not Completed: the UI (and a scheduler) shows the run as not fully successful; the data still holds
    # every good result, written above
    saes = sorted({f["sae"] for f in failures})
    return Failed(message=f"{len(failures)} SAE(s) or stage(s) failed ({', '.join(saes)[:300]}); the rest of "
                          f"run {run_ref.run} completed", data=out)


def run_evaluate(cfg: EvaluateConfig = EvaluateConfig(), home: str | None = None, run: str | None = None) -> dict:
    """Run the flow with Prefect's result store inside SAGE_HOME; returns its outputs (`n_failed` counts what failed:
    the flow run itself then ends Failed). An error before any result (bad input) is raised."""
    with results_in(SageHome(home)):
        state = evaluate(cfg=cfg, home=home, run=run, return_state=True)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    return out
