"""The watch service's tasks: list a source, claim what is new in the ledger, check a model can be loaded here, settle
what became of each SAE, and record any evaluation's scored SAEs (`record-evaluations`, run by `evaluate` too).

None is cached: each reads or writes the ledger (the one mutable state) or a source that changes between runs.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect import task

from sage_core.config import WatchConfig
from sage_core.watch.plan import Decision, Outcome, decide
from sage_core.watch.sources import FoundSAE, parse_source
from storage import scores as sc_store
from storage.home import SageHome
from storage.ledger import Ledger, LedgerError, now_utc
from storage.pretrained_models import hub_unreachable_reason, model_label, why_not_loadable
from storage.refs import RunRef, SAERef
from storage.watch_sources import list_source
from tasks.common import UNCACHED, log

# a source is read over a network or a shared filesystem: retry a while longer than a local stage
LISTING = {**UNCACHED, "retries": 3, "retry_delay_seconds": [5, 30, 120]}


@task(name="list-source", task_run_name="list {source}", **LISTING)
def list_sae_source(source: str, home: str, dry_run: bool = False) -> tuple[list[FoundSAE], list[tuple[str, str]]]:
    """The SAEs a source lists now, and the entries it could not read (path, why) — those are skipped, not fatal.
    `dry_run`: nothing is written under SAGE_HOME (a remote folder's SAEs are hashed in a temporary copy)."""
    listing = list_source(parse_source(source), SageHome(home), write=not dry_run)
    log().info(f"{source}: {len(listing.found)} SAE(s), {len(listing.unreadable)} unreadable")
    return list(listing.found), list(listing.unreadable)


@task(name="claim-new", task_run_name=lambda parameters: f"claim-new ({len(parameters['found'])} listed)",
      **UNCACHED)
def claim_new(found: list[FoundSAE], owner: str, cfg: WatchConfig, dry_run: bool, home: str) -> list[Decision]:
    """What each found SAE is to this run; unless a dry run, recorded and the new ones claimed (one transaction).
    A dry run reads the ledger read-only: it creates, migrates and writes nothing, on a read-only SAGE_HOME too."""
    h = SageHome(home)
    if dry_run:
        if not h.ledger_path().exists():  # a dry run creates nothing: with no ledger, nothing was seen
            return decide(found, {}, {}, owner, now_utc(), cfg.max_new)
        return Ledger.of(h, read_only=True).plan(found, owner, cfg.max_new)
    return Ledger.of(h).claim(found, owner, cfg.lease_hours, cfg.max_new)


@task(name="check-model", task_run_name="check-model {model}", **UNCACHED)
def check_model(model: str, zoo_model: str, home: str) -> tuple[str, str | None]:
    """(the model's label: TransformerLens' official name for an alias, so gpt2-small and gpt2 are one model; None if
    it can be loaded here, else why not: its SAEs are then skipped, not failed)."""
    return model_label(model, zoo_model), why_not_loadable(model, SageHome(home), zoo_model)


@task(name="check-hub", task_run_name="check-hub", **UNCACHED)
def check_hub() -> str | None:
    """None if SAE weights that are not in the local Hugging Face cache can be downloaded now, else why not."""
    return hub_unreachable_reason()


@task(name="settle", task_run_name=lambda parameters: f"settle ({len(parameters['outcomes'])} outcome(s))", **UNCACHED)
def settle(owner: str, outcomes: list[Outcome], home: str) -> int:
    return Ledger.of(SageHome(home)).settle(owner, outcomes)


@task(name="release-claims", task_run_name="release-claims", **UNCACHED)
def release_claims(owner: str, home: str) -> int:
    return Ledger.of(SageHome(home)).release(owner)


def scored_saes(board: pl.DataFrame, saes: list[SAERef]) -> list[dict[str, str]]:
    """Per SAE of a run, from its leaderboard: evaluated (some native row ok) or failed (the first row's reason); an
    SAE with no native row (its hook holds no kept cross-section) is not among them."""
    native = board.filter((pl.col("kind") == "trained") & (pl.col("mapping") == "native"))
    out = []
    for s in saes:
        rows = native.filter(pl.col("sae") == s.name)
        if rows.is_empty():
            continue
        ok = (rows["status"] == "ok").any()
        out.append({"content_hash": s.hash, "sae": s.name, "spec": s.spec, "hook": s.hook,
                    "status": "evaluated" if ok else "failed",
                    "reason": "" if ok else str(rows["status"][0]).removeprefix("failed: ")})
    return out


@task(name="record-evaluations", task_run_name="record-evaluations {run.run}", **UNCACHED)
def record_evaluations(run: RunRef, model_label: str, saes: list[SAERef], home: str) -> list[dict[str, Any]]:
    """The run's scored SAEs into the ledger's evaluations (by content hash: what `sage leaderboard` ranks across
    runs and what a watch run does not score twice); returns them."""
    h = SageHome(home)
    _, board, _ = sc_store.read_run(h.at(run))
    rows = scored_saes(board, saes)
    try:
        added = Ledger.of(h).record_run(run.run, model_label, rows)
    except LedgerError as e:  # the run's files are written and whole: a ledger it cannot reach does not undo them
        log().warning(f"ledger: run {run.run} not recorded ({e}); `sage leaderboard` will not show it")
        return rows
    log().info(f"ledger: {added} evaluation(s) of run {run.run} recorded ({len(rows) - added} already there)")
    return rows


def evaluated_ranks(home: SageHome, outcomes: list[dict[str, Any]]) -> pl.DataFrame:
    """Where each SAE this run evaluated ranks among every SAE evaluated for its model (latest result per hash)."""
    from sage_core.scoring.across import ranks_of
    from storage.boards import across_runs

    evaluated = [o for o in outcomes if o["status"] == "evaluated" and o["content_hash"]]
    if not evaluated:
        return pl.DataFrame()
    evaluations = Ledger.of(home).evaluations()
    frames = []
    for model in sorted({o["model"] for o in evaluated}):
        board = across_runs(home, evaluations, model=model)
        for w in board.warnings:
            log().warning(f"leaderboard across runs: {w}")
        frames.append(ranks_of(board.rows, {o["content_hash"] for o in evaluated if o["model"] == model}))
    return pl.concat(frames, how="diagonal_relaxed")


@task(name="publish-watch", task_run_name="publish-watch", **UNCACHED)
def publish_watch(summary: dict[str, Any], home: str) -> str:
    """The "new this run" markdown artifact (one key: every watch run is a version of it in the UI)."""
    import time

    from prefect.artifacts import create_markdown_artifact

    from report.watch import WATCH_ARTIFACT_KEY, watch_markdown

    ranks = evaluated_ranks(SageHome(home), summary["outcomes"])
    markdown = watch_markdown(summary, ranks, time.strftime("%Y-%m-%d %H:%M"))
    create_markdown_artifact(key=WATCH_ARTIFACT_KEY, markdown=markdown, description="SAGE watch: SAEs new this run")
    return WATCH_ARTIFACT_KEY
