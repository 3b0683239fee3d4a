"""Flow `evaluate`: model x tasks x SAEs -> scores/<run>/ and reports/<run>/.

zoo (built if missing) -> locate + fit the ground truth (subflow `fit`) -> resolve and check every SAE -> per task: one
role-position capture of every hook any cross-section or SAE needs, and the cross-sections' references -> one mapped
`score-unit` per (SAE or projected pair or control) x task, and `core-metrics` per SAE -> leaderboard, report,
Prefect artifacts.

Every task is cached on the content hashes of its inputs, so adding one SAE to an evaluated set runs only that SAE's
scoring (and its core metrics): no capture, location search or fit is repeated. A failing SAE is reported as failed
and the rest of the run completes.
"""

from __future__ import annotations

import time

import polars as pl
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build_zoo import build_zoo, zoo_if_whole
from flows.fit import fit_ground_truth, ground_truth_if_whole
from flows.pretrained import prepare_pretrained
from flows.settings import results_in
from report.summary import summary_markdown
from report.verdicts import ground_truth_verdicts
from sage_core.config import EvaluateConfig
from sage_core.ground_truth.sections import CrossSection
from sage_core.model.capture import CaptureRequest
from sage_core.prompts.library import get_task
from sage_core.scoring import mapping as mp
from sage_core.scoring.leaderboard import leaderboard
from sage_core.scoring.rows import score_frame
from sage_core.zoo.plan import plan_zoo
from storage import scores as sc_store
from storage.atomic import StoreError
from storage.ground_truth import read_quality
from storage.home import SageHome, check_run_name
from storage.reports import write_report
from storage.sae_sources import check_specs, list_zoo_saes
from tasks import capture as ct
from tasks.common import ManifestSerializer, in_home, output_key
from tasks.score import (
    ScoringUnit,
    identity_brackets,
    resolve_sae,
    sae_core_metrics,
    sae_family,
    score_unit,
    section_references,
)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def plan_units(saes: list[dict], sections: list[CrossSection], cfg: EvaluateConfig,
               same_as_difference: frozenset[tuple[str, str]] = frozenset()) -> list[ScoringUnit]:
    """Native units, projection / difference units for every residual family bracketing a sub-layer cross-section,
    and the two controls. A bracket in `same_as_difference` (P_c is the identity there) gets no `difference` unit: it
    would repeat the projection's figures row for row."""
    units = [ScoringUnit(name=s["name"], kind="trained", mapping="native", saes=(s,)) for s in saes]
    if cfg.projections:
        by_family: dict[str, dict[str, dict]] = {}
        for s in saes:
            hook = mp.canonical_hook(s["hook"])
            if "resid" in hook:
                by_family.setdefault(sae_family(s), {})[hook] = s
        brackets = sorted({mp.bracket(c.hook) for c in sections if mp.is_sublayer(c.hook)})
        for fam, members in sorted(by_family.items()):
            for before, after in brackets:
                if before in members and after in members:
                    for mapping in ("projection", "difference"):
                        if mapping == "difference" and (before, after) in same_as_difference:
                            continue
                        name = f"{fam}:{mapping}[{_short(before)}->{_short(after)}]"
                        units.append(ScoringUnit(name=name, kind="trained", mapping=mapping,
                                                 saes=(members[before], members[after]), bracket=(before, after)))
    if cfg.controls:
        units += [ScoringUnit(name="control:oracle", kind="oracle", mapping="control"),
                  ScoringUnit(name="control:random", kind="random", mapping="control")]
    return units


def _short(hook: str) -> str:
    layer, site = mp.parse_hook(hook)
    return f"L{layer}.{site.removeprefix('hook_')}"


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True,
      result_serializer=ManifestSerializer())
def evaluate(cfg: EvaluateConfig = EvaluateConfig(), home: str | None = None, run: str | None = None):
    """Returns the run's outputs (paths relative to SAGE_HOME where they are records); when any SAE or stage failed,
    after every good result is written, the flow run ends Failed with the count in its message (data: the same)."""
    h = SageHome(home)
    h.ensure_writable()  # a data root that cannot take the results fails now, not after the compute
    if run is not None:
        check_run_name(run)  # a deployment parameter too: refused before any work, never joined into a path
    zcfg = cfg.model_zoo()
    root, name = str(h.root), zcfg.model.name
    tasks = list(cfg.tasks or zcfg.tasks)
    if cfg.pretrained and not cfg.saes:
        raise ValueError(f"no SAEs given for {cfg.pretrained}: pass --saes (a SAELens release/sae_id or directory); "
                         "the zoo's SAEs belong to the built-in model")
    if cfg.saes:  # a spec that names nothing fails before any work
        # the zoo's SAEs as built or as the zoo build will make them (the CLI checks the same names)
        zoo_names = [] if cfg.pretrained else sorted({s.name for s in plan_zoo(zcfg).specs}
                                                     | set(list_zoo_saes(h, name)))
        check_specs(list(cfg.saes), h, name, zoo_names)
    if cfg.pretrained:
        zoo = prepare_pretrained(pretrained=cfg.pretrained, cfg=zcfg, home=root)
    else:
        zoo = zoo_if_whole(zcfg, h) or build_zoo(cfg=zcfg, home=root)
    gt = (ground_truth_if_whole(zcfg, cfg.locate, h, cfg.per_group, tasks=tasks)
          or fit_ground_truth(cfg=zcfg, locate_cfg=cfg.locate, home=root, per_group=cfg.per_group, tasks=tasks))
    model = ct.model_manifest(h, name)

    specs = list(cfg.saes) or [f"zoo:{n}" for n in list_zoo_saes(h, name)]
    resolved = in_home(resolve_sae, h).map(specs, unmapped(model), unmapped(name), unmapped(root), return_state=True)
    saes, failures = [], []
    for spec, state in zip(specs, resolved, strict=True):
        if state.is_completed():
            saes.append(state.result())
        else:
            failures.append({"sae": spec, "stage": "load", "error": one_line(state.result(raise_on_failure=False))})

    datasets = {d["task"]: d for d in zoo["datasets"]}
    parts_by_task = {t: [p for p in gt["parts"] if p["task"] == t] for t in tasks}
    sections = [CrossSection(**p["section_obj"]) for ps in parts_by_task.values() for p in ps]
    brackets = sorted({mp.bracket(c.hook) for c in sections if mp.is_sublayer(c.hook)})
    same = (frozenset(tuple(b) for b in identity_brackets(model, [list(b) for b in brackets], root))
            if cfg.projections and brackets else frozenset())
    units = plan_units(saes, sections, cfg, same)
    jobs, unreached = [], []  # unreached: SAEs whose hook holds none of a task's kept cross-sections
    for t in tasks:
        ds, parts = datasets[t], parts_by_task[t]
        if not parts:
            failures.append({"sae": "*", "stage": "fit", "error": f"task {t}: no cross-section was kept"})
            continue
        task_sections = [CrossSection(**p["section_obj"]) for p in parts]
        hooks = {c.hook for c in task_sections}
        hooks |= {s["hook"] for u in units for s in u.saes if any(u.reaches(c) for c in task_sections)}
        request = CaptureRequest(hooks=tuple(sorted(hooks)), positions="roles")
        prep = in_home(ct.prepare_capture, h)(model, ds, request, root)
        sealed = ct.finalize_capture(prep, [ct.capture_shard(prep, model, request, 0, 1, root)], root,
                                     return_state=True)
        if not sealed.is_completed():  # a damaged store is the store's fault: no SAE is scored on it, none is blamed
            failures.append({"sae": "*", "stage": f"capture {t}",
                             "error": one_line(sealed.result(raise_on_failure=False))})
            continue
        store = sealed.result()
        attrs = get_task(t).attribute_names()
        refs = in_home(section_references, h)(model, ds, store, parts, t, attrs, cfg.score.max_test, zoo["corpus"],
                                  cfg.core_sequences, root)
        for u in units:
            if any(u.reaches(c) for c in task_sections):
                jobs.append((u, t, ds, store, refs, attrs))
            elif u.kind == "trained" and u.mapping == "native":
                unreached.append({"sae": u.name, "task": t, "hook": u.saes[0]["hook"]})
    futures = in_home(score_unit, h).map([j[0] for j in jobs], unmapped(model), [j[2] for j in jobs], [j[3] for j in jobs],
                             [j[4] for j in jobs], [j[1] for j in jobs], [j[5] for j in jobs], unmapped(name),
                             unmapped(cfg.score), unmapped(root), return_state=True)
    core_states = in_home(sae_core_metrics, h).map(saes, unmapped(model), unmapped(zoo["corpus"]), unmapped(cfg.core_sequences),
                                       unmapped(name), unmapped(root), return_state=True)

    frames, unit_rows, part_hashes = [], [], []
    for (u, t, *_), state in zip(jobs, futures, strict=True):
        row = {"sae": u.name, "task": t, "kind": u.kind, "mapping": u.mapping, "status": "ok"}
        if state.is_completed():
            m = state.result()
            frames.append(sc_store.read_part(h.at(m["path"])))
            part_hashes.append(m["hash"])
        else:
            exc = state.result(raise_on_failure=False)
            err = one_line(exc)
            row["status"] = f"failed: {err}"
            # a damaged input (store, references, ground truth) is its stage's fault, never the SAE's
            failures.append({"sae": "*", "stage": f"input of {u.name} on {t}", "error": err}
                            if isinstance(exc, StoreError) else {"sae": u.name, "stage": f"score {t}", "error": err})
        unit_rows.append(row)
    for f in failures:
        if f["stage"] == "load":
            unit_rows += [{"sae": f["sae"], "task": t, "kind": "trained", "mapping": "native",
                           "status": f"failed: {f['error']}"} for t in tasks]
    core = [{k: v for k, v in s.result().items() if k != "path"} for s in core_states if s.is_completed()]
    for sae, s in zip(saes, core_states, strict=True):
        if not s.is_completed():
            failures.append({"sae": sae["name"], "stage": "core", "error": one_line(s.result(raise_on_failure=False))})

    scores = pl.concat(frames) if frames else score_frame([])
    units_df = pl.DataFrame(unit_rows, schema={"sae": pl.String, "task": pl.String, "kind": pl.String,
                                               "mapping": pl.String, "status": pl.String})
    core_df = pl.DataFrame(core).drop([c for c in ("ce_clean", "ce_with_sae", "ce_zero_ablation")
                                       if core and c in core[0]]) if core else pl.DataFrame()
    board = leaderboard(scores, units_df, core_df)
    fail_df = pl.DataFrame(failures, schema={"sae": pl.String, "stage": pl.String, "error": pl.String})
    # what failed, not the wording of its error (which may name a temp path or a hub's passing state)
    run_key = output_key("evaluate", dict(model=model, ground_truth=gt["hash"], parts=sorted(part_hashes),
                                          failures=sorted((f["sae"], f["stage"]) for f in failures), core=core),
                         ("flows.evaluate",))
    run = run or f"run-{run_key[:12]}"
    meta = {"run": run, "run_key": run_key, "model": cfg.pretrained or name, "model_hash": model["hash"], "tasks": tasks,
            "n_saes": len(specs), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "ground_truth": gt["path"]}
    out_dir = sc_store.write_run(h.scores_dir(run), scores, board, fail_df, meta)
    verdicts = ground_truth_verdicts(read_quality(h.at(gt["path"]))).filter(pl.col("task").is_in(tasks))
    report = write_report(h.report_dir(run), scores, board, fail_df, meta, verdicts)
    _publish(board, fail_df, meta, verdicts)
    out = {"run": run, "scores": str(out_dir / "scores.parquet"), "leaderboard": str(out_dir / "leaderboard.parquet"),
            "report": str(report), "n_failed": len(failures), "ground_truth": gt["path"], "unreached": unreached,
            "sections": {t: sorted({p["section_obj"]["hook"] for p in parts_by_task[t]}) for t in tasks},
            "model_eval": [r for r in zoo["model_eval"]["rows"] if r["task"] in tasks] if cfg.pretrained else [],
            "verdicts": verdicts.to_dicts()}
    if failures:
        # Failed, not Completed: the UI (and a scheduler) shows the run as not fully successful; the data still holds
        # every good result, written above
        saes = sorted({f["sae"] for f in failures})
        return Failed(message=f"{len(failures)} SAE(s) or stage(s) failed ({', '.join(saes)[:300]}); the rest of "
                              f"run {run} completed", data=out)
    return out


def _publish(board: pl.DataFrame, failures: pl.DataFrame, meta: dict, verdicts: pl.DataFrame) -> None:
    show = ["sae", "task", "kind", "mapping", "status", "summary", "explained_variance", "sufficiency", "necessity",
            "edit_accuracy_k4", "f1_mean", "mcc", "ce_loss_recovered"]
    create_table_artifact(key="sae-leaderboard", table=board.select(show).to_dicts(),
                          description=f"SAGE leaderboard, run {meta['run']}")
    create_markdown_artifact(key="sae-evaluation-summary", markdown=summary_markdown(board, failures, meta, verdicts=verdicts),
                             description=f"SAGE evaluation report, run {meta['run']}")


def run_evaluate(cfg: EvaluateConfig = EvaluateConfig(), home: str | None = None, run: str | None = None) -> dict:
    """Run the flow with Prefect's result store inside SAGE_HOME; returns its outputs (`n_failed` counts what failed:
    the flow run itself then ends Failed). An error before any result (bad input) is raised."""
    with results_in(SageHome(home)):
        state = evaluate(cfg=cfg, home=home, run=run, return_state=True)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    return out
