"""Flow `watch`: notice the SAEs published since the last run, evaluate only those, record what became of each.

list every source (`list-source`, retried) -> decide and claim what is new in the ledger (`claim-new`, one
transaction: a concurrent watch run sees those SAEs as busy) -> per model: can it be loaded here (`check-model`; if
not, its SAEs are skipped with the reason) -> the `evaluate` subflow on the new SAEs only -> `settle` each SAE's
outcome in the ledger -> the "new this run" artifact: what was evaluated, its rank among every SAE ever evaluated for
its model, what failed or was skipped, and why.

A watch run that stops with an error gives its claims back; one that dies holds them until its lease runs out
(`WatchConfig.lease_hours`). A retry of the same flow run takes its own claims again.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from flows.evaluate import evaluate, one_line
from flows.settings import results_in
from sage_core.config import WatchConfig
from sage_core.watch.plan import Decision, Outcome, by_model
from sage_core.watch.sources import FoundSAE, parse_source
from storage.home import SageHome
from tasks import watch as wt
from tasks.common import ManifestSerializer, in_home, log

TASKS = (wt.list_sae_source, wt.claim_new, wt.check_model, wt.settle, wt.release_claims, wt.publish_watch)


def watch_run_name() -> str:
    return f"watch {time.strftime('%Y-%m-%d %H:%M')}"


def _owner() -> str:
    """Who holds this run's claims: the flow run (its retries are the same owner), else this process's run."""
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else f"local-{uuid.uuid4().hex[:12]}"


@flow(name="watch", flow_run_name=watch_run_name, task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True,
      result_serializer=ManifestSerializer())
def watch(sources: list[str] | None = None, cfg: WatchConfig = WatchConfig(), dry_run: bool = False,
          home: str | None = None) -> dict[str, Any]:
    """`sources`: texts of `sage_core.watch.sources.parse_source` (registry:<model>[:<release>], dir:<path or URL>,
    yaml:<path or URL>). Returns what each SAE was to this run (outcomes with reasons, counts, the runs that scored
    them); `dry_run` lists what is new and changes nothing."""
    texts = list(sources or [])
    if not texts:
        raise ValueError("no sources to watch: pass --source registry:<model>, dir:<folder> or yaml:<file>")
    for text in texts:
        parse_source(text)  # one line for a bad source, before any work
    h = SageHome(home)
    if not dry_run:
        h.ensure_writable()
    root = str(h.root)
    t = {task.name: in_home(task, h) for task in TASKS}
    listings = [t["list-source"].submit(text, root) for text in texts]
    found: list[FoundSAE] = []
    unreadable, source_errors = [], []
    for text, future in zip(texts, listings, strict=True):
        future.wait()
        if future.state.is_completed():
            got, bad = future.result()
            found += got
            unreadable += [{"source": text, "path": p, "reason": why} for p, why in bad]
        else:  # one source down (a network share, a hub) does not stop the others
            source_errors.append({"source": text, "error": one_line(future.state.result(raise_on_failure=False))})
    owner = _owner()
    decisions = t["claim-new"](found, owner, cfg, dry_run, root)
    new = [d.found for d in decisions if d.action == "evaluate"]
    log().info(f"watch: {len(found)} SAE(s) listed, {len(new)} new" + (" (dry run: nothing evaluated)" if dry_run
                                                                          else ""))
    outcomes: list[Outcome] = []
    if not dry_run:
        try:
            for model, group in by_model(new).items():
                outcomes += _evaluate_group(t, model, group, cfg, root)
        except BaseException:
            t["release-claims"](owner, root)  # the next run takes them on
            raise
        t["settle"](owner, outcomes, root)
    summary = _summary(texts, decisions, outcomes, unreadable, source_errors, dry_run)
    summary["artifact"] = t["publish-watch"](summary, root)
    return summary


def _evaluate_group(t: dict, model: str, group: list[FoundSAE], cfg: WatchConfig, root: str) -> list[Outcome]:
    """One `evaluate` of a model's new SAEs; each SAE's outcome from its results (evaluated, failed at load or
    scoring, or skipped: its hook holds none of the kept cross-sections)."""
    zoo_model = cfg.evaluate.zoo.model.name
    why = t["check-model"](model, zoo_model, root)
    if why is not None:
        log().warning(f"watch: {len(group)} SAE(s) of {model} skipped: {why}")
        return [Outcome(found=f, status="skipped", reason=why, model=model) for f in group]
    ecfg = cfg.evaluate.model_copy(update={"saes": tuple(f.spec for f in group),
                                           "pretrained": None if model == zoo_model else model})
    state = engine.current().flow(evaluate)(cfg=ecfg, home=root, return_state=True)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):  # the whole evaluation stopped (a bad input, a model that would not load)
        return [Outcome(found=f, status="failed", reason=one_line(out), model=model) for f in group]
    scored = {r["spec"]: r for r in out["saes"]}
    load_errors = {f["sae"]: f["error"] for f in out["failures"] if f["stage"] == "load"}
    unreached = {}
    for u in out["unreached"]:
        unreached.setdefault(u["sae"], []).append(u["task"])
    outcomes = []
    for f in group:
        r = scored.get(f.spec)
        if r is not None:
            outcomes.append(Outcome(found=f, status=r["status"], reason=r["reason"], run=out["run"], sae=r["sae"],
                                    content_hash=r["content_hash"], model=model))
        elif f.spec in load_errors:
            outcomes.append(Outcome(found=f, status="failed", reason=load_errors[f.spec], model=model))
        else:
            outcomes.append(Outcome(found=f, status="skipped", model=model, run=out["run"],
                                    reason=f"its hook {f.hook or '(unknown)'} holds none of the kept cross-sections "
                                           f"of the tasks; nothing to score it against"))
    return outcomes


def _summary(sources: list[str], decisions: list[Decision], outcomes: list[Outcome], unreadable: list[dict],
             source_errors: list[dict], dry_run: bool) -> dict[str, Any]:
    def row(f: FoundSAE, **kw) -> dict[str, Any]:
        return {"source": f.source, "release": f.release, "sae_id": f.sae_id, "spec": f.spec, "model": f.model,
                "hook": f.hook, "content_hash": f.content_hash, **kw}

    done = [row(o.found, status=o.status, reason=o.reason, run=o.run, sae=o.sae,
                content_hash=o.content_hash or o.found.content_hash) for o in outcomes]
    others = [row(d.found, status=d.action, reason=d.reason, run=d.run, sae=d.sae) for d in decisions
              if d.action != "evaluate" or dry_run]
    counts = {k: sum(r["status"] == k for r in done) for k in ("evaluated", "failed", "skipped")}
    counts |= {k: sum(d.action == k for d in decisions)
               for k in ("evaluate", "same-weights", "unchanged", "busy", "deferred")}
    return {"sources": sources, "dry_run": dry_run, "listed": len(decisions), "new": counts.pop("evaluate"),
            "counts": counts, "outcomes": done, "not_new": others, "unreadable": unreadable,
            "source_errors": source_errors, "runs": sorted({r["run"] for r in done if r["run"]})}


def run_watch(sources: list[str], cfg: WatchConfig = WatchConfig(), dry_run: bool = False, home: str | None = None,
              cluster: str = "threads") -> dict[str, Any]:
    """The flow on the engine `cluster` names, Prefect's result store inside SAGE_HOME; its summary. An error before
    any result (a bad source, an unreachable scheduler) is raised."""
    with results_in(SageHome(home)), engine.open_engine(cluster, cfg.evaluate.device) as eng:
        state = eng.flow(watch)(sources=sources, cfg=cfg, dry_run=dry_run, home=home, return_state=True)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    return out
