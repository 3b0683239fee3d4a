"""The plan of a watch run, pure: what each found SAE is to this run (`decide`), how the SAEs to evaluate are batched
(`name_batches`), what became of each (`outcomes_of`, from an evaluation's outputs) and the run's summary.

An SAE is new when it was never seen or its weights' content hash changed. New weights that some run already scored
(an unchanged copy of a zoo SAE in a watched folder, say) are not scored again: they are recorded as evaluated by that
run. An SAE skipped before (its model could not be loaded here) is looked at again: the model may be loadable now.

An SAE another watch run claimed is busy while that run may still be working on it: until its lease runs out, unless
the process that holds the claim is known to have ended (`Holder`; the ledger tells which holders on its own host are
gone, `decide` only reads that): a killed watch's SAEs are taken over by the next run on its host at once, while a
claim held by a live process, by a process on another host or by a holder that never said who it is waits for its
lease.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sage_core.watch.sources import FoundSAE

RECHECK = "skipped before "  # the reason of a skipped SAE looked at again: it yields to new ones under a limit
Action = Literal["evaluate", "same-weights", "unchanged", "busy", "deferred"]
Status = Literal["new", "evaluated", "failed", "skipped"]


class Holder(BaseModel):
    """The process that holds a watch run's claims: where it runs, its pid there and when it started, so a claim whose
    process has ended (killed, crashed, its machine rebooted) is told apart from one whose process still works, and
    from a new process that reuses the pid."""

    model_config = ConfigDict(frozen=True)
    host: str  # where `pid` names this process: the host's name, its machine and its pid namespace
    pid: int
    started: str  # when the process started, as its host counts it (boot and clock tick on Linux)

    @property
    def hostname(self) -> str:
        return self.host.split("/", 1)[0]

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.hostname}"


class SeenRow(BaseModel):
    """What the ledger remembers of an SAE (the columns `decide` reads)."""

    status: str
    reason: str = ""
    content_hash: str | None = None
    run: str | None = None
    sae: str | None = None
    claimed_by: str | None = None
    claimed_until: str | None = None
    claim_host: str | None = None
    claim_pid: int | None = None
    claim_started: str | None = None

    @property
    def holder(self) -> Holder | None:
        """Who holds the claim; None where the claim does not say (made before claims named their process)."""
        if self.claim_host and self.claim_pid is not None and self.claim_started:
            return Holder(host=self.claim_host, pid=self.claim_pid, started=self.claim_started)
        return None


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)
    found: FoundSAE
    action: Action
    reason: str
    run: str | None = None  # for same-weights / unchanged: the run that scored it
    sae: str | None = None


class Outcome(BaseModel):
    """What became of a claimed SAE; `content_hash` and `model` as the evaluation saw them, where it got that far."""

    model_config = ConfigDict(frozen=True)
    found: FoundSAE
    status: Status
    reason: str = ""
    run: str | None = None
    sae: str | None = None
    content_hash: str | None = None
    model: str | None = None


def _short(h: str | None) -> str:
    return (h or "unknown")[:12]


def _one(f: FoundSAE, seen: SeenRow | None, scored: dict[str, tuple[str, str]], owner: str, now: str,
         gone: frozenset[Holder]) -> Decision:
    h = f.content_hash
    if seen is not None and seen.status == "evaluating" and seen.claimed_by != owner:
        holder = seen.holder
        if holder is not None and holder in gone:
            expired = f"watch run {seen.claimed_by} that claimed it ({holder}) is no longer running; evaluated again"
        elif seen.claimed_until is not None and seen.claimed_until > now:
            by = f" ({holder})" if holder is not None else ""
            return Decision(found=f, action="busy", reason=f"being evaluated by watch run {seen.claimed_by}{by} "
                                                           f"(claimed until {seen.claimed_until[:19]})")
        else:
            expired = f"the claim of watch run {seen.claimed_by} expired; evaluated again"
    else:
        expired = None
    changed = seen is not None and h is not None and h != seen.content_hash
    if seen is None or changed:
        if h is not None and h in scored:
            run, sae = scored[h]
            return Decision(found=f, action="same-weights", run=run, sae=sae,
                            reason=f"same weights ({_short(h)}) as {sae}, scored in run {run}")
        why = "never seen" if seen is None else f"weights changed ({_short(seen.content_hash)} -> {_short(h)})"
        return Decision(found=f, action="evaluate", reason=why)
    if expired:
        return Decision(found=f, action="evaluate", reason=expired)
    if seen.status == "evaluated":
        return Decision(found=f, action="unchanged", run=seen.run, sae=seen.sae,
                        reason=f"unchanged; evaluated in run {seen.run}")
    if seen.status == "failed" and seen.run is None:  # no result at all (the evaluation stopped): not the SAE's verdict
        return Decision(found=f, action="evaluate", reason=f"failed before any result ({seen.reason}); tried again")
    if seen.status == "failed":
        return Decision(found=f, action="unchanged", run=seen.run, sae=seen.sae,
                        reason=f"unchanged; failed in run {seen.run} ({seen.reason}); new weights are evaluated again")
    if seen.status == "skipped":
        return Decision(found=f, action="evaluate", reason=f"{RECHECK}({seen.reason}); checked again")
    return Decision(found=f, action="evaluate", reason="seen before, not evaluated yet")


def decide(found: list[FoundSAE], seen: dict[tuple[str, str, str], SeenRow], scored: dict[str, tuple[str, str]],
           owner: str, now: str, limit: int | None = None, gone: frozenset[Holder] | set[Holder] = frozenset()
           ) -> list[Decision]:
    """One decision per found SAE (the first of duplicates): `seen` is the ledger's rows by key, `scored` the run and
    name of the latest successful evaluation of each content hash, `now` an ISO-8601 UTC time (claims are compared
    as strings of that form), `gone` the holders of other runs' claims known to have ended (their claims pass on at
    once; every other claim of another run is busy until its lease runs out). At most `limit` are evaluated, new
    ones before skipped ones looked at again (those may be many and would otherwise take every place for ever); the
    rest are deferred to the next run."""
    out, keys = [], set()
    gone = frozenset(gone)
    for f in found:
        if f.key not in keys:
            keys.add(f.key)
            out.append(_one(f, seen.get(f.key), scored, owner, now, gone))
    if limit is None:
        return out
    todo = [i for i, d in enumerate(out) if d.action == "evaluate"]
    todo.sort(key=lambda i: out[i].reason.startswith(RECHECK))  # stable: listing order within each kind
    for i in todo[limit:]:
        out[i] = Decision(found=out[i].found, action="deferred", reason=f"over this run's limit of {limit}; left for "
                                                                         "the next")
    return out


def by_model(found: list[FoundSAE], label: dict[str, str] | None = None) -> dict[str, list[FoundSAE]]:
    """The SAEs to evaluate grouped by the model they read (by `label[model]` where given: aliases of one model, such
    as gpt2-small and gpt2, are one group), in the order first seen (one evaluation per model)."""
    out: dict[str, list[FoundSAE]] = {}
    for f in found:
        out.setdefault((label or {}).get(f.model, f.model), []).append(f)
    return out


def run_name_of(f: FoundSAE) -> str:
    """The name an SAE gets in an evaluation: a directory's own name (`storage.sae_sources`), else its spec."""
    return f.spec.rstrip("/").rsplit("/", 1)[-1] if not f.release and f.spec.startswith("/") else f.spec


def name_batches(group: list[FoundSAE]) -> list[list[FoundSAE]]:
    """The group split into as few evaluations as keep every SAE's name unique within one (two watched folders may
    both hold a `layer3/`): a run's rows are told apart by name."""
    batches: list[tuple[set[str], list[FoundSAE]]] = []
    for f in group:
        name = run_name_of(f)
        batch = next((b for b in batches if name not in b[0]), None)
        if batch is None:
            batch = (set(), [])
            batches.append(batch)
        batch[0].add(name)
        batch[1].append(f)
    return [b[1] for b in batches]


def outcomes_of(group: list[FoundSAE], out: dict[str, Any], model: str) -> list[Outcome]:
    """Each SAE's outcome from an evaluation's outputs (`flows.evaluate`): `saes` (what it scored, by spec), `failures`
    (stage "load": the SAE's own; sae "*": an input stage's), `unreached` (SAEs whose hook holds no kept
    cross-section). A result stands (evaluated, or failed in scoring: the SAE's verdict); no result because an input
    stage failed is a failure without a run, tried again next time; no result because nothing could score it (its hook
    holds no kept cross-section, or no task runs on the model: `task_status`) is a skip, with that reason."""
    scored = {r["spec"]: r for r in out["saes"]}
    load_errors = {x["sae"]: x["error"] for x in out["failures"] if x["stage"] == "load"}
    inputs_failed = "; ".join(f"{x['stage']}: {x['error']}" for x in out["failures"] if x["sae"] == "*")
    status = out.get("task_status") or []
    no_task = bool(status) and not any(t["status"] == "ran" for t in status)  # core metrics were all it could do
    unreached: dict[str, list[str]] = {}
    for u in out["unreached"]:
        unreached.setdefault(u["sae"], []).append(u["task"])
    outcomes = []
    for f in group:
        r = scored.get(f.spec)
        name = run_name_of(f)
        if r is not None:
            outcomes.append(Outcome(found=f, status=r["status"], reason=r["reason"], run=out["run"], sae=r["sae"],
                                    content_hash=r["content_hash"], model=model))
        elif f.spec in load_errors:
            outcomes.append(Outcome(found=f, status="failed", reason=load_errors[f.spec], run=out["run"], model=model))
        elif no_task:
            outcomes.append(Outcome(found=f, status="skipped", model=model, run=out["run"],
                                    reason=f"no task runs on {model} (" + "; ".join(f"{t['task']}: {t['status']}"
                                                                          for t in status)
                                           + "): its core metrics are in the run, there is nothing to score it against"))
        elif name in unreached:
            outcomes.append(Outcome(found=f, status="skipped", model=model, run=out["run"],
                                    reason=f"its hook {f.hook or '(unknown)'} holds none of the kept cross-sections "
                                           f"of {', '.join(sorted(unreached[name]))}: nothing to score it against"))
        else:
            outcomes.append(Outcome(found=f, status="failed", model=model,
                                    reason=f"not scored: {inputs_failed or 'the evaluation gave no result for it'}"))
    return outcomes


def summarize(sources: list[str], decisions: list[Decision], outcomes: list[Outcome], unreadable: list[dict],
              source_errors: list[dict], dry_run: bool) -> dict[str, Any]:
    """What a watch run returns and publishes: every SAE with what it was to this run and why, and the counts."""
    def row(f: FoundSAE, **kw) -> dict[str, Any]:
        return {"source": f.source, "release": f.release, "sae_id": f.sae_id, "spec": f.spec, "model": f.model,
                "hook": f.hook, "content_hash": f.content_hash, **kw}

    done = [row(o.found, status=o.status, reason=o.reason, run=o.run, sae=o.sae,
                content_hash=o.content_hash or o.found.content_hash, model=o.model or o.found.model)
            for o in outcomes]
    others = [row(d.found, status=d.action, reason=d.reason, run=d.run, sae=d.sae) for d in decisions
              if d.action != "evaluate" or dry_run]
    counts = {k: sum(r["status"] == k for r in done) for k in ("evaluated", "failed", "skipped")}
    counts |= {k: sum(d.action == k for d in decisions)
               for k in ("evaluate", "same-weights", "unchanged", "busy", "deferred")}
    return {"sources": sources, "dry_run": dry_run, "listed": len(decisions), "new": counts.pop("evaluate"),
            "counts": counts, "outcomes": done, "not_new": others, "unreadable": unreadable,
            "source_errors": source_errors, "runs": sorted({r["run"] for r in done if r["run"]})}
