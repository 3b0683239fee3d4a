"""`sage_core.watch.plan.decide`: every rule of what is new, against hand-written expectations."""

from __future__ import annotations

from sage_core.watch.plan import SeenRow, by_model, decide
from sage_core.watch.sources import FoundSAE

NOW = "2026-11-30T03:00:00.000000+00:00"
LATER = "2026-11-30T09:00:00.000000+00:00"
EARLIER = "2026-11-29T21:00:00.000000+00:00"


def found(name: str, h: str | None = "h-" + "a", model: str = "sage-tiny") -> FoundSAE:
    return FoundSAE(source="dir:/inbox", sae_id=f"/inbox/{name}", spec=f"/inbox/{name}", model=model,
                    hook="blocks.0.hook_resid_post", content_hash=h)


def one(f, seen=None, scored=None, owner="me"):
    return decide([f], {f.key: seen} if seen else {}, scored or {}, owner, NOW)[0]


def test_never_seen_is_new_unless_its_weights_were_scored():
    assert one(found("a", "h1")).action == "evaluate"
    d = one(found("a", "h1"), scored={"h1": ("run-x", "res-l1")})
    assert (d.action, d.run, d.sae) == ("same-weights", "run-x", "res-l1")
    assert one(found("a", None), scored={"h1": ("run-x", "res-l1")}).action == "evaluate"


def test_changed_weights_are_new_and_unchanged_ones_are_not():
    seen = SeenRow(status="evaluated", content_hash="h1", run="run-x", sae="a")
    assert one(found("a", "h1"), seen).action == "unchanged"
    d = one(found("a", "h2"), seen)
    assert d.action == "evaluate" and "h1 -> h2" in d.reason
    assert one(found("a", None), seen).action == "unchanged"  # the source cannot say: it was evaluated
    assert one(found("a", "h2"), seen, scored={"h2": ("run-y", "b")}).action == "same-weights"


def test_failed_waits_for_new_weights_and_skipped_is_checked_again():
    failed = SeenRow(status="failed", reason="boom", content_hash="h1")
    assert one(found("a", "h1"), failed).action == "unchanged"
    assert one(found("a", "h2"), failed).action == "evaluate"
    assert one(found("a", "h1"), SeenRow(status="skipped", reason="no model", content_hash="h1")).action == "evaluate"
    assert one(found("a", "h1"), SeenRow(status="new", content_hash="h1")).action == "evaluate"


def test_claims_of_other_runs_are_busy_until_they_expire():
    held = SeenRow(status="evaluating", content_hash="h1", claimed_by="other", claimed_until=LATER)
    assert one(found("a", "h1"), held).action == "busy"
    assert one(found("a", "h2"), held).action == "busy"  # even changed: the other run has it
    assert one(found("a", "h1"), held, owner="other").action == "evaluate"  # a retry of the same run
    expired = held.model_copy(update={"claimed_until": EARLIER})
    d = one(found("a", "h1"), expired)
    assert d.action == "evaluate" and "expired" in d.reason


def test_duplicates_once_and_a_limit_defers_the_rest():
    fs = [found("a", "1"), found("a", "1"), found("b", "2"), found("c", "3"), found("d", "4")]
    ds = decide(fs, {}, {}, "me", NOW, limit=2)
    assert [d.action for d in ds] == ["evaluate", "evaluate", "deferred", "deferred"]
    assert [d.found.sae_id for d in ds] == ["/inbox/a", "/inbox/b", "/inbox/c", "/inbox/d"]


def test_by_model_keeps_first_seen_order():
    fs = [found("a", model="m2"), found("b", model="m1"), found("c", model="m2")]
    groups = by_model(fs)
    assert list(groups) == ["m2", "m1"] and [f.sae_id for f in groups["m2"]] == ["/inbox/a", "/inbox/c"]
