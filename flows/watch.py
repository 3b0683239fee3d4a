"""Flow `watch`: notice the SAEs published since the last run, evaluate only those, record what became of each.

list every source (`list-source`, retried) -> decide and claim what is new in the ledger (`claim-new`, one
transaction: a concurrent watch run sees those SAEs as busy) -> per model: can it be loaded here (`check-model`; if
not, its SAEs are skipped with the reason) -> the `evaluate` subflow on the new SAEs only -> `settle` each SAE's
outcome in the ledger -> the "new this run" artifact: what was evaluated, its rank among every SAE ever evaluated for
its model, what failed or was skipped, and why.

A watch run that stops with an error gives its claims back. One that dies (killed, its machine rebooted) leaves them
held by a process that no longer runs: the next watch run on the same host takes them over at once; a run on another
host, which cannot tell, waits until their lease runs out (`WatchConfig.lease_hours`), as it does for a claim whose
process still runs. A retry of the same flow run takes its own claims again.
"""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from flows.evaluate import evaluate
from flows.settings import running_in
from sage_core.config import WatchConfig
from sage_core.watch.plan import Outcome, by_model, name_batches, outcomes_of, summarize
from sage_core.watch.sources import FoundSAE, parse_source
from storage.home import SageHome
from tasks import watch as wt
from tasks.common import ManifestSerializer, in_home, log, one_line


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
    at_home = partial(in_home, home=h)  # each task with its cache records in this data root
    listings = [at_home(wt.list_sae_source).submit(text, root, dry_run) for text in texts]
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
    decisions = at_home(wt.claim_new)(found, owner, cfg, dry_run, root)
    new = [d.found for d in decisions if d.action == "evaluate"]
    log().info(f"watch: {len(found)} SAE(s) listed, {len(new)} new" + (" (dry run: nothing evaluated)" if dry_run
                                                                          else ""))
    outcomes: list[Outcome] = []
    if not dry_run:
        zoo_model = cfg.evaluate.zoo.model.name
        checked = {m: at_home(wt.check_model)(m, zoo_model, root) for m in dict.fromkeys(f.model for f in new)}
        try:
            for label, group in by_model(new, {m: c[0] for m, c in checked.items()}).items():
                outcomes += _evaluate_group(at_home, label, checked[group[0].model][1], group, cfg, root)
        except BaseException:
            at_home(wt.settle)(owner, outcomes, root)  # what is done stays done; the rest is the next run's
            at_home(wt.release_claims)(owner, root)
            raise
        at_home(wt.settle)(owner, outcomes, root)
    summary = summarize(texts, decisions, outcomes, unreadable, source_errors, dry_run)
    summary["artifact"] = at_home(wt.publish_watch)(summary, root)
    return summary


def _evaluate_group(at_home, model: str, why: str | None, group: list[FoundSAE], cfg: WatchConfig,
                    root: str) -> list[Outcome]:
    """The `evaluate` subflow on a model's new SAEs (several where two share a name); each SAE's outcome from its
    results. A model that cannot be loaded here (`why`), or hub SAEs whose weights are neither cached nor reachable,
    are skipped with the reason; an evaluation that stopped fails its SAEs without a result (tried again next run)."""
    if why is not None:
        log().warning(f"watch: {len(group)} SAE(s) of {model} skipped: {why}")
        return [Outcome(found=f, status="skipped", reason=why, model=model) for f in group]
    outcomes = []
    uncached = [f for f in group if f.release and f.content_hash is None]  # registry / YAML SAEs not in the cache
    hub_down = at_home(wt.check_hub)() if uncached else None
    if hub_down is not None:
        outcomes += [Outcome(found=f, status="skipped", model=model, reason=hub_down) for f in uncached]
        group = [f for f in group if f not in uncached]
    zoo_model = cfg.evaluate.zoo.model.name
    for batch in name_batches(group):
        ecfg = cfg.evaluate.model_copy(update={"saes": tuple(f.spec for f in batch),
                                               "pretrained": None if model == zoo_model else model})
        # named after what it evaluates (its results rename it after its run once they are in)
        named = evaluate.with_options(flow_run_name=_evaluation_name(model, batch))
        state = engine.current().flow(named)(cfg=ecfg, home=root, return_state=True)
        out = state.result(raise_on_failure=False)
        if isinstance(out, BaseException):  # the whole evaluation stopped (a bad input, a model that would not load)
            outcomes += [Outcome(found=f, status="failed", reason=f"the evaluation stopped: {one_line(out)}",
                                 model=model) for f in batch]
        else:
            outcomes += outcomes_of(batch, out, model)
    return outcomes


def _evaluation_name(model: str, batch: list[FoundSAE]) -> str:
    """`evaluate gpt2: res-jb/blocks.8.hook_resid_pre and 3 more (watch)`: a person reads which SAEs it scores."""
    names = [f"{f.release}/{f.sae_id}" if f.release else (f.sae_id or f.spec).rstrip("/").rsplit("/", 1)[-1]
             for f in batch]
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    return f"evaluate {model}: {', '.join(names[:2])}{more} (watch)"[:200]


def dry_run_watch(sources: list[str], cfg: WatchConfig = WatchConfig(), home: str | None = None) -> dict[str, Any]:
    """What a watch run would do, without Prefect: no server started, no flow run or artifact in its API, nothing
    written under SAGE_HOME (the listing and the ledger are read only). The flow's own steps, called directly."""
    texts = list(sources)
    for text in texts:
        parse_source(text)
    root = str(SageHome(home).root)
    found: list[FoundSAE] = []
    unreadable, source_errors = [], []
    for text in texts:
        try:
            got, bad = wt.list_sae_source.fn(text, root, True)
        except Exception as exc:  # noqa: BLE001 - one source down does not stop the others, as in the flow
            source_errors.append({"source": text, "error": one_line(exc)})
            continue
        found += got
        unreadable += [{"source": text, "path": p, "reason": why} for p, why in bad]
    decisions = wt.claim_new.fn(found, _owner(), cfg, True, root)
    return summarize(texts, decisions, [], unreadable, source_errors, True)


def run_watch(sources: list[str], cfg: WatchConfig = WatchConfig(), dry_run: bool = False, home: str | None = None,
              cluster: str = "threads") -> dict[str, Any]:
    """The flow on the engine `cluster` names, Prefect's result store inside SAGE_HOME; its summary (a dry run:
    `dry_run_watch`, without Prefect). An error before any result (a bad source, an unreachable scheduler) is
    raised."""
    if dry_run:
        return dry_run_watch(sources, cfg, home)
    with running_in(SageHome(home), cluster, cfg.evaluate.device) as eng:
        state = eng.flow(watch)(sources=sources, cfg=cfg, dry_run=dry_run, home=home, return_state=True)
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    return out
