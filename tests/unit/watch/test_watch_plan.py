"""`sage_core.watch.plan.decide`: every rule of what is new, against hand-written expectations."""

from __future__ import annotations

from sage_core.watch.plan import (
    Holder,
    Outcome,
    SeenRow,
    by_model,
    decide,
    name_batches,
    outcomes_of,
    run_name_of,
    summarize,
)
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
    failed = SeenRow(status="failed", reason="boom", content_hash="h1", run="run-x", sae="a")
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


def test_a_claim_whose_holder_has_ended_passes_on_at_once_others_wait_for_their_lease():
    """Issue 27 item 8: a killed watch's claims were busy for the whole lease. The ledger names the holders of this
    host that are gone; their claims pass on now, every other claim of another run waits for its lease."""
    dead = Holder(host="box/m1/pid:[1]", pid=4242, started="boot:100")
    live = Holder(host="box/m1/pid:[1]", pid=4243, started="boot:200")
    held = SeenRow(status="evaluating", content_hash="h1", claimed_by="killed-run", claimed_until=LATER,
                   claim_host=dead.host, claim_pid=dead.pid, claim_started=dead.started)
    assert held.holder == dead and str(dead) == "pid 4242 on box"
    f = found("a", "h1")
    d = decide([f], {f.key: held}, {}, "me", NOW, gone={dead})[0]
    assert d.action == "evaluate" and "watch run killed-run that claimed it (pid 4242 on box) is no longer running" \
        in d.reason
    busy = decide([f], {f.key: held}, {}, "me", NOW, gone={live})[0]  # its holder is not known to have ended
    assert busy.action == "busy" and "pid 4242 on box" in busy.reason
    assert decide([f], {f.key: held}, {}, "me", NOW)[0].action == "busy"
    unnamed = held.model_copy(update={"claim_host": None, "claim_pid": None, "claim_started": None})  # a v1 claim
    assert unnamed.holder is None and decide([f], {f.key: unnamed}, {}, "me", NOW, gone={dead})[0].action == "busy"
    # a dead holder's changed weights are new, said as such; the same-weights rule still applies
    assert decide([found("a", "h2")], {f.key: held}, {}, "me", NOW, gone={dead})[0].action == "evaluate"
    sw = decide([found("a", "h2")], {f.key: held}, {"h2": ("run-y", "b")}, "me", NOW, gone={dead})[0]
    assert sw.action == "same-weights"


def test_duplicates_once_and_a_limit_defers_the_rest():
    fs = [found("a", "1"), found("a", "1"), found("b", "2"), found("c", "3"), found("d", "4")]
    ds = decide(fs, {}, {}, "me", NOW, limit=2)
    assert [d.action for d in ds] == ["evaluate", "evaluate", "deferred", "deferred"]
    assert [d.found.sae_id for d in ds] == ["/inbox/a", "/inbox/b", "/inbox/c", "/inbox/d"]


def test_by_model_keeps_first_seen_order():
    fs = [found("a", model="m2"), found("b", model="m1"), found("c", model="m2")]
    groups = by_model(fs)
    assert list(groups) == ["m2", "m1"] and [f.sae_id for f in groups["m2"]] == ["/inbox/a", "/inbox/c"]


def test_a_failure_without_a_result_is_tried_again_a_scored_failure_is_not():
    assert one(found("a", "h1"), SeenRow(status="failed", reason="worker died", content_hash="h1")).action == "evaluate"
    scored = SeenRow(status="failed", reason="NaN in W_dec", content_hash="h1", run="run-x", sae="a")
    assert one(found("a", "h1"), scored).action == "unchanged"


def test_under_a_limit_new_saes_go_before_skipped_ones_looked_at_again():
    skipped = SeenRow(status="skipped", reason="no gpt2 here", content_hash=None)
    fs = [found(f"s{i}", None) for i in range(3)] + [found("n1", "1"), found("n2", "2")]
    seen = {f.key: skipped for f in fs[:3]}
    ds = decide(fs, seen, {}, "me", NOW, limit=3)
    assert {d.found.sae_id.rsplit("/", 1)[1]: d.action for d in ds} == {
        "s0": "evaluate", "s1": "deferred", "s2": "deferred", "n1": "evaluate", "n2": "evaluate"}


def test_name_batches_keep_names_unique_per_evaluation():
    a = FoundSAE(source="dir:/labA", sae_id="/labA/layer3", spec="/labA/layer3", model="m")
    b = FoundSAE(source="dir:/labB", sae_id="/labB/layer3", spec="/labB/layer3", model="m")
    c = FoundSAE(source="dir:/labB", sae_id="/labB/layer4/", spec="/labB/layer4/", model="m")
    r = FoundSAE(source="registry:m:*", release="rel", sae_id="layer3", spec="rel/layer3", model="m")
    assert [run_name_of(x) for x in (a, c, r)] == ["layer3", "layer4", "rel/layer3"]
    assert name_batches([a, b, c, r]) == [[a, c, r], [b]]


def _out(**kw):
    return {"run": "run-7", "saes": [], "failures": [], "unreached": [], **kw}


def test_outcomes_of_an_evaluation():
    ok, bad, lost, far, gone = (found(n, f"h-{n}") for n in ("ok", "bad", "lost", "far", "gone"))
    out = _out(saes=[{"spec": ok.spec, "sae": "ok", "status": "evaluated", "reason": "", "content_hash": "c-ok"},
                     {"spec": bad.spec, "sae": "bad", "status": "failed", "reason": "NaN", "content_hash": "c-bad"}],
               failures=[{"sae": lost.spec, "stage": "load", "error": "d_in 16 != 32"},
                         {"sae": "*", "stage": "capture ioi", "error": "disk full"}],
               unreached=[{"sae": "far", "task": "sva", "hook": "h"}, {"sae": "far", "task": "ioi", "hook": "h"}])
    got = {o.found.sae_id.rsplit("/", 1)[1]: o for o in outcomes_of([ok, bad, lost, far, gone], out, "sage-tiny")}
    assert (got["ok"].status, got["ok"].run, got["ok"].content_hash, got["ok"].model) == (
        "evaluated", "run-7", "c-ok", "sage-tiny")
    assert (got["bad"].status, got["bad"].reason, got["bad"].run) == ("failed", "NaN", "run-7")
    assert (got["lost"].status, got["lost"].reason, got["lost"].run) == ("failed", "d_in 16 != 32", "run-7")
    assert got["far"].status == "skipped" and "of ioi, sva" in got["far"].reason
    assert (got["gone"].status, got["gone"].run) == ("failed", None)  # tried again: an input stage failed
    assert "capture ioi: disk full" in got["gone"].reason


def test_where_no_task_runs_on_the_model_each_sae_is_skipped_with_the_reason_not_failed():
    x = found("x", "h-x")
    status = [{"task": "ioi", "status": "not done"}, {"task": "greater_than", "status": "not posed"}]
    out = _out(saes=[], failures=[], unreached=[], task_status=status)
    (o,) = outcomes_of([x], out, "gpt2")
    assert (o.status, o.run) == ("skipped", "run-7")
    assert "no task runs on gpt2 (ioi: not done; greater_than: not posed)" in o.reason and "core metrics" in o.reason
    out["task_status"] = [{"task": "ioi", "status": "ran"}]  # a task ran but left the SAE out: an input's failure
    assert outcomes_of([x], out, "gpt2")[0].status == "failed"


def test_summarize_counts_every_sae_once():
    fs = [found("a", "1"), found("b", "2"), found("c", "3")]
    ds = decide(fs, {fs[2].key: SeenRow(status="evaluated", content_hash="3", run="r0", sae="c")}, {}, "me", NOW)
    outs = [Outcome(found=fs[0], status="evaluated", run="r1", sae="a", model="sage-tiny"),
            Outcome(found=fs[1], status="skipped", reason="no model")]
    s = summarize(["dir:/inbox"], ds, outs, [], [], dry_run=False)
    assert (s["listed"], s["new"], s["runs"]) == (3, 2, ["r1"])
    assert s["counts"] == {"evaluated": 1, "failed": 0, "skipped": 1, "same-weights": 0, "unchanged": 1, "busy": 0,
                           "deferred": 0}
    assert [r["sae_id"] for r in s["not_new"]] == ["/inbox/c"]
