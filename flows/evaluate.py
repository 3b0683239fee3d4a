"""Flow `evaluate`: model x tasks x SAEs -> scores/<run>/ and reports/<run>/.

zoo (built if missing) -> locate + fit the ground truth (subflow `fit`) -> resolve and check every SAE -> plan the
scoring units -> per task: one role-position capture of every hook its cross-sections and SAEs need, and the
cross-sections' references -> one `score-sae` per SAE (its units on every task: native, and the projected pairs it
closes; then its core metrics) and one for the controls, each submitted to the command's engine (`flows.engine`:
threads, or a Dask cluster's workers, each taking an even share of the SAEs, one hook's together) -> verdicts, leaderboard and run files, report, Prefect artifacts -> the scored SAEs into the
ledger's evaluations (what `sage leaderboard` ranks across runs).

Every result is cached on the content hashes of its inputs (a score part per unit and task, core metrics per SAE),
so adding one SAE to an evaluated set runs only that SAE's scoring (and its core metrics): no capture, location search or fit is repeated. A failing SAE is reported as
failed and the rest of the run completes. The flow only wires tasks; what failed where is its bookkeeping.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from flows.build_zoo import build_zoo
from flows.fit import fit_ground_truth
from flows.pretrained import prepare_pretrained
from flows.settings import running_in
from sage_core.config import EvaluateConfig
from sage_core.prompts.task_status import TaskStatus, task_statuses
from storage import scores as sc_store
from storage import zoo as zoo_store
from storage.home import SageHome
from storage.pretrained_models import model_label
from storage.sae_sources import distinct_specs, list_zoo_saes
from tasks import capture as ct
from tasks import corpus as corpus_tasks
from tasks import progress
from tasks import report as rt
from tasks.common import ManifestSerializer, in_home, log, one_line
from tasks.plan import check_inputs, plan_scoring, sae_works
from tasks.score import resolve_sae, score_sae, section_references
from tasks.units import JobOutcome, SAEOutcome, SAEWork, TaskInputs
from tasks.watch import record_evaluations


def flow_run_name() -> str:
    """The run's name when given; otherwise a placeholder until the results name the run (`publish` renames it)."""
    from prefect.runtime import flow_run

    return flow_run.parameters.get("run") or "evaluate (named when scored)"


def _submit(runner, task, **parameters):
    """`task` submitted on `runner` (the engine's per-SAE pool: `flows.engine.per_sae_runner`), or on the flow's own."""
    return runner.submit(task, parameters) if runner is not None else task.submit(**parameters)


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
    after every good result is written, the flow run ends Failed with the count in its message (data: the same).

    Every task that reads the model runs on the engine (`flows.engine`): on a Dask cluster this process reads
    nothing, and each worker reads the model once and each SAE it scores once."""
    h = SageHome(home)
    h.ensure_writable()  # a data root that cannot take the results fails now, not after the compute
    check_inputs(cfg, h, run)  # a spec that names nothing fails before any work
    eng = engine.current()
    loads_before = eng.loads()
    zcfg = cfg.model_zoo()
    root, name, tasks = str(h.root), zcfg.model.name, list(cfg.tasks or zcfg.tasks)
    at_home = partial(in_home, home=h)  # each task with its cache records in this data root
    one = eng.unit_devices(cfg.device, 1)[0]
    if cfg.pretrained:
        zoo = eng.flow(prepare_pretrained)(pretrained=cfg.pretrained, cfg=zcfg, home=root)
    else:
        zoo = eng.flow(build_zoo)(cfg=zcfg, home=root)
    # the core metrics' text (`--corpus`), before the long stages: text that cannot be read fails the run now
    corpus = at_home(corpus_tasks.prepare_corpus)(cfg.core_corpus(), cfg.corpus_tokens, cfg.corpus_context, zoo.model, zoo.corpus,
                                 cfg.core_sequences, root)
    posed = _task_statuses(h, zoo, tasks, cfg, cfg.pretrained or name)
    tasks = [s.task for s in posed if s.runs]  # the others get no ground truth; every SAE still gets core metrics
    gt = None if not tasks else (
        eng.flow(fit_ground_truth)(cfg=zcfg, locate_cfg=cfg.locate, home=root, per_group=cfg.per_group,
                                      tasks=tasks))
    failures: list[dict[str, str]] = []

    # each SAE once (two specs of one SAE are one; two SAEs of one name were refused by `check_inputs`)
    specs = distinct_specs(cfg.saes, h, name) if cfg.saes else [f"zoo:{n}" for n in list_zoo_saes(h, name)]
    # one worker per share of the specs, sorted (one hook's SAEs together): it resolves them, keeps them, scores them
    worker_of = eng.assign(specs)
    with eng.per_sae_runner() as runner:
        resolving = [_submit(runner, at_home(resolve_sae), spec=spec, model=zoo.model, model_name=name, home=root,
                             worker=worker_of[spec]) for spec in specs]
        saes = _kept(specs, resolving, "load", failures)
    plan = at_home(plan_scoring).submit(saes, gt, tasks, zoo.model, cfg, root).result()
    failures += [{"sae": "*", "stage": "fit", "error": f"task {e}: no cross-section was kept"} for e in plan.empty]

    stores = _captured(at_home, plan, zoo, root, one, failures)
    referencing = {tp.task: at_home(section_references).submit(zoo.model, zoo.dataset(tp.task), stores[tp.task],
                                                           list(tp.parts), cfg.score.max_test, corpus.ref,
                                                           corpus.n_sequences, root, device=one)
                   for tp in plan.tasks if tp.task in stores}
    inputs = {}
    for task_name, state in zip(referencing, _settle(list(referencing.values())), strict=True):
        if state.is_completed():
            inputs[task_name] = TaskInputs(dataset=zoo.dataset(task_name), store=stores[task_name],
                                           refs=state.result())
        else:  # a task's references are its inputs' (store, ground truth): no SAE is to blame
            failures.append({"sae": "*", "stage": f"references {task_name}", "error": one_line(_error(state))})
    works = [w.model_copy(update={"jobs": tuple(j for j in w.jobs if j.task in inputs)}) for w in sae_works(plan, saes)]
    parts, statuses, core, scoring = _scored(at_home, eng, works, worker_of, zoo.model, inputs, name, cfg, corpus,
                                                       root, failures)
    loads = _log_loads(eng, loads_before, len(saes))

    verdicts = at_home(rt.judge_ground_truth)(gt, tasks, root)
    run_ref = at_home(rt.write_run_files)(run, zoo.model, cfg.pretrained or name, gt, tasks, len(specs), parts, statuses, core,
                               failures, root, corpus=corpus.about, task_status=[s.model_dump() for s in posed])
    report = at_home(rt.write_run_report)(run_ref, verdicts, list(plan.unreached), root)
    result = at_home(rt.publish_run)(run_ref, report, verdicts, root)
    for line in result:  # the run's results in its log (task runs log warnings only: progress is in the artifacts)
        log().info(line)
    recorded = at_home(record_evaluations)(run_ref, model_label(cfg.pretrained) if cfg.pretrained else name, saes, root)
    return _outputs(h, cfg, tasks, zoo, gt, run_ref, report, verdicts, plan, failures, loads, recorded, posed,
                    scoring, result)


def _scored(at_home, eng, works: list[SAEWork], worker_of: dict, model, inputs: dict[str, TaskInputs], name: str,
            cfg: EvaluateConfig, corpus, root: str, failures: list[dict[str, str]]):
    """One `score-sae` task run per SAE (and one for the controls), each sent to the worker that resolved its SAE;
    then per unit and task a status row, and the parts and core metrics that completed."""
    started = time.perf_counter()
    progress.begin("score", sum(len(w.jobs) for w in works))
    progress.begin("core", sum(w.sae is not None for w in works))
    devices = eng.unit_devices(cfg.device, len(works))
    # the largest first (the controls score on every task): the last to finish is a short one, no slot idles long
    works = sorted(works, key=lambda w: -len(w.jobs))
    with eng.per_sae_runner() as runner:
        futures = [_submit(runner, at_home(score_sae), work=w, model=model, inputs=inputs, model_name=name,
                           cfg=cfg.score, corpus=corpus.ref, n_sequences=corpus.n_sequences, home=root,
                           worker=worker_of.get(w.group), device=dev) for w, dev in zip(works, devices, strict=True)]
        states = _settle(futures)
    outcomes = []
    for w, state in zip(works, states, strict=True):
        if state.is_completed():
            outcomes.append(state.result())
        else:  # raised past its units (a lasting I/O error after retries): every one of its results is missing
            error = one_line(_error(state))
            outcomes.append(SAEOutcome(name=w.name, parts=tuple(JobOutcome(job=j, error=error) for j in w.jobs),
                                       core_error=error if w.sae is not None else None))
    progress.end("score")
    progress.end("core")
    wall = time.perf_counter() - started
    parts, statuses, core, seconds = [], [], [], []
    for o in outcomes:
        for p in o.parts:
            u, task_name = p.job.unit, p.job.task
            statuses.append({"sae": u.name, "task": task_name, "kind": u.kind, "mapping": u.mapping,
                             "status": "ok" if p.error is None else f"failed: {p.error}"})
            if p.part is not None:
                parts.append(p.part)
            elif p.input_fault:
                failures.append({"sae": "*", "stage": f"input of {u.name} on {task_name}", "error": p.error})
            else:
                failures.append({"sae": u.name, "stage": f"score {task_name}", "error": p.error})
        if o.core is not None:
            core.append(o.core)
        elif o.core_error is not None:
            failures.append({"sae": o.name, "stage": "core", "error": o.core_error})
        seconds.append({"name": o.name, "units": len(o.parts), "built": o.built, **o.seconds})
    # the stage's wall and, per dispatched unit, its results, those computed now and its seconds (benchmarks read it)
    return parts, statuses, core, {"wall_s": wall, "units": seconds}


def _task_statuses(h: SageHome, zoo, tasks: list[str], cfg: EvaluateConfig, model: str) -> list[TaskStatus]:
    """Which tasks the model's tokenizer poses and the model does (`sage_core.prompts.task_status`), each said in the
    log; the run's files, its report and the CLI say it again."""
    statuses = task_statuses(tasks, {d.task: d.skipped for d in zoo.datasets}, {d.task: d.note for d in zoo.datasets},
                             {r["task"]: r for r in zoo_store.read_zoo_table(h, zoo.model_eval)},
                             cfg.min_task_accuracy)
    for s in statuses:
        (log().info if s.runs else log().warning)(s.line(model))
    return statuses


def _captured(at_home, plan, zoo, root: str, device: str, failures: list[dict[str, str]]) -> dict:
    """Per task: one role-position capture of every hook its plan needs, sealed (task -> store). A damaged store is
    the store's fault: no SAE is scored on it, none is blamed."""
    tps = list(plan.tasks)
    preps = [at_home(ct.prepare_capture).submit(zoo.model, zoo.dataset(tp.task), tp.request, root) for tp in tps]
    preps = [p.result() for p in preps]
    progress.begin("capture", sum(p.n_chunks for p in preps))
    try:
        sealed = []
        for tp, prep in zip(tps, preps, strict=True):
            ds = zoo.dataset(tp.task)
            shard = at_home(ct.capture_shard).submit(prep, zoo.model, ds, tp.request, 0, 1, root, device=device)
            sealed.append(at_home(ct.finalize_capture).submit(prep, ds, [shard], root))
        states = _settle(sealed)
    finally:
        progress.end("capture")
    out = {}
    for tp, state in zip(tps, states, strict=True):
        if state.is_completed():
            out[tp.task] = state.result()
        else:
            failures.append({"sae": "*", "stage": f"capture {tp.task}", "error": one_line(_error(state))})
    return out


def _log_loads(eng, before, n_saes: int) -> dict[str, int]:
    """What this run read from disk, on every process doing the work (its log states it; the outputs carry it)."""
    now = eng.loads()
    loads = {k: now[k] - before.get(k, 0) for k in ("model", "sae", "references", "model-copy", "moved")}
    loads["processes"] = eng.n_workers
    log().info(f"loads: the model read {loads['model']} time(s), SAEs {loads['sae']} time(s) for {n_saes} SAE(s), "
               f"section references {loads['references']} time(s), on {loads['processes']} worker process(es) "
               f"({loads['model-copy']} in-memory model copies for threads, {loads['moved']} device copies)")
    return loads


def _outputs(h: SageHome, cfg: EvaluateConfig, tasks: list[str], zoo, gt, run_ref, report, verdicts, plan,
             failures: list[dict[str, str]], loads: dict[str, int],
             recorded: list[dict[str, Any]], posed: list[TaskStatus],
             scoring: dict[str, Any], result: list[str]) -> State:
    files = sc_store.run_files(h.at(run_ref))
    out = {"run": run_ref.run, "scores": str(files["scores"]), "leaderboard": str(files["leaderboard"]),
           "report": str(h.at(report)), "n_failed": len(failures), "ground_truth": gt.path if gt else None,
           "unreached": list(plan.unreached),
           "sections": {t: sorted({p.section.hook for p in gt.of_task(t)}) for t in tasks} if gt else {},
           "model_eval": zoo_store.read_zoo_table(h, zoo.model_eval) if cfg.pretrained else [],
           "task_status": [s.model_dump() for s in posed],
           "verdicts": verdicts, "loads": loads, "saes": recorded, "failures": failures,
           "scoring": scoring}
    won = " | ".join(line for line in result if line.split(":", 1)[0] in tasks)  # each task's best and controls
    if not failures:  # who won, in the flow run's state message (the UI's run page and its list show it)
        return Completed(message=f"run {run_ref.run}: {won or 'no task was scored'}"[:1000], data=out)
    # Failed, not Completed: the UI (and a scheduler) shows the run as not fully successful; the data still holds
    # every good result, written above
    saes = sorted({f["sae"] for f in failures})
    return Failed(message=f"{len(failures)} SAE(s) or stage(s) failed ({', '.join(saes)[:300]}); the rest of "
                          f"run {run_ref.run} completed: {won}"[:1000], data=out)


def run_evaluate(cfg: EvaluateConfig = EvaluateConfig(), home: str | None = None, run: str | None = None,
                 cluster: str = "threads") -> dict:
    """Run the flow on the engine `cluster` names (`flows.engine`) with Prefect's result store inside SAGE_HOME;
    returns its outputs (`n_failed` counts what failed: the flow run itself then ends Failed; `loads`: what was read
    from disk). An error before any result (bad input, an unreachable scheduler) is raised."""
    with running_in(SageHome(home), cluster, cfg.device) as eng:
        state = eng.flow(evaluate)(cfg=cfg, home=home, run=run, return_state=True)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    return out
