"""The ledger's rules for watch runs' claims, pure: no files, no clock, no processes (the time and what the host says
about its processes are passed in; `storage.ledger` reads them and keeps the rows).

A run claims the SAEs it evaluates for a lease (`lease_until`). Another run's claim passes on before its lease runs
out only when its holder is known to have ended (`gone`): the holder ran on this host, and the process its pid names
here now is not it (none runs, or one that started at another time: the pid was reused). A holder on another host, one
whose pid this host could not check, or a claim that names no holder (made before claims named their process) is
never known to have ended: it waits for its lease (`sage_core.watch.plan.decide` reads `gone`).

A settled outcome adds an evaluation only where there is a result to rank (`evaluation_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from sage_core.watch.plan import Holder, Outcome, SeenRow


def lease_until(now: str, hours: float) -> str:
    """When a claim made at `now` (ISO-8601 UTC, to the microsecond) for `hours` runs out, in the same form (claims
    are compared as strings of it)."""
    return (datetime.fromisoformat(now) + timedelta(hours=hours)).isoformat(timespec="microseconds")


def others_holders(seen: Iterable[SeenRow], owner: str) -> frozenset[Holder]:
    """The holders of other runs' claims among `seen` (an SAE being evaluated by a run that is not `owner`); claims
    that name no holder are not among them."""
    return frozenset(r.holder for r in seen
                     if r.status == "evaluating" and r.claimed_by != owner and r.holder is not None)


def to_check(holders: Iterable[Holder], host: str) -> set[int]:
    """The pids to look up on this host (`host`: its identity): a pid of another host names none of its processes."""
    return {h.pid for h in holders if h.host == host}


def gone(holders: Iterable[Holder], host: str, running: Mapping[int, str | None]) -> frozenset[Holder]:
    """Those of `holders` known to have ended: they ran on `host` (this host), and `running[pid]` (when the process
    that has that pid here now started; None: none runs) is not when they started. A pid missing from `running` could
    not be checked: its holder is not known to have ended."""
    return frozenset(h for h in holders if h.host == host and h.pid in running and running[h.pid] != h.started)


def evaluation_of(o: Outcome) -> dict[str, str] | None:
    """The evaluation a settled outcome adds (the ledger's `evaluations` columns but the time): a result, evaluated or
    failed in scoring, that names its run, its name there and its weights' content hash (the evaluation's, else the
    listing's). None for a skip or a failure without a run: there is no result to rank."""
    content_hash = o.content_hash or o.found.content_hash
    if o.status not in ("evaluated", "failed") or not (o.run and o.sae and content_hash):
        return None
    return {"content_hash": content_hash, "model": o.model or o.found.model, "run": o.run, "sae": o.sae,
            "spec": o.found.spec, "source": o.found.source, "status": o.status, "reason": o.reason}
