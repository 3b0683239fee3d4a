"""The plan of a watch run, pure: what each found SAE is to this run (`decide`), what became of it (`Outcome`), and
how the SAEs to evaluate group by model.

An SAE is new when it was never seen or its weights' content hash changed. New weights that some run already scored
(an unchanged copy of a zoo SAE in a watched folder, say) are not scored again: they are recorded as evaluated by that
run. An SAE skipped before (its model could not be loaded here) is looked at again: the model may be loadable now.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from sage_core.watch.sources import FoundSAE

Action = Literal["evaluate", "same-weights", "unchanged", "busy", "deferred"]
Status = Literal["new", "evaluated", "failed", "skipped"]


class SeenRow(BaseModel):
    """What the ledger remembers of an SAE (the columns `decide` reads)."""

    status: str
    reason: str = ""
    content_hash: str | None = None
    run: str | None = None
    sae: str | None = None
    claimed_by: str | None = None
    claimed_until: str | None = None


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


def _one(f: FoundSAE, seen: SeenRow | None, scored: dict[str, tuple[str, str]], owner: str, now: str) -> Decision:
    h = f.content_hash
    if seen is not None and seen.status == "evaluating" and seen.claimed_by != owner:
        if seen.claimed_until is not None and seen.claimed_until > now:
            return Decision(found=f, action="busy", reason=f"being evaluated by watch run {seen.claimed_by} "
                                                           f"(claimed until {seen.claimed_until[:19]})")
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
    if seen.status == "failed":
        return Decision(found=f, action="unchanged", run=seen.run, sae=seen.sae,
                        reason=f"unchanged; failed before ({seen.reason}); new weights are evaluated again")
    if seen.status == "skipped":
        return Decision(found=f, action="evaluate", reason=f"skipped before ({seen.reason}); checked again")
    return Decision(found=f, action="evaluate", reason="seen before, not evaluated yet")


def decide(found: list[FoundSAE], seen: dict[tuple[str, str, str], SeenRow], scored: dict[str, tuple[str, str]],
           owner: str, now: str, limit: int | None = None) -> list[Decision]:
    """One decision per found SAE (the first of duplicates): `seen` is the ledger's rows by key, `scored` the run and
    name of the latest successful evaluation of each content hash, `now` an ISO-8601 UTC time (claims are compared
    as strings of that form). At most `limit` are evaluated; the rest are deferred to the next run."""
    out, keys, n = [], set(), 0
    for f in found:
        if f.key in keys:
            continue
        keys.add(f.key)
        d = _one(f, seen.get(f.key), scored, owner, now)
        if d.action == "evaluate":
            n += 1
            if limit is not None and n > limit:
                d = Decision(found=f, action="deferred", reason=f"over this run's limit of {limit}; left for the next")
        out.append(d)
    return out


def by_model(found: list[FoundSAE]) -> dict[str, list[FoundSAE]]:
    """The SAEs to evaluate grouped by the model they read, in the order first seen (one evaluation per model)."""
    out: dict[str, list[FoundSAE]] = {}
    for f in found:
        out.setdefault(f.model, []).append(f)
    return out
