"""`sage_core.watch.claims`: the ledger's claim rules against hand-computed cases (no ledger, no clock, no process)."""

from __future__ import annotations

import pytest

from sage_core.watch.claims import evaluation_of, gone, lease_until, others_holders, to_check
from sage_core.watch.plan import Holder, Outcome, SeenRow
from sage_core.watch.sources import FoundSAE

HERE, THERE = "box/m1/pid:[4026531836]", "other/m2/pid:[4026531836]"
F = FoundSAE(source="dir:/inbox", sae_id="/inbox/a", spec="/inbox/a", model="sage-tiny", content_hash="h-list")


@pytest.mark.parametrize(("now", "hours", "until"), [
    ("2026-11-30T03:00:00.000000+00:00", 12, "2026-11-30T15:00:00.000000+00:00"),
    ("2026-11-30T15:30:00.250000+00:00", 12, "2026-12-01T03:30:00.250000+00:00"),  # across midnight and a month
    ("2026-11-30T03:00:00.000000+00:00", 0.5, "2026-11-30T03:30:00.000000+00:00"),
    ("2026-11-30T03:00:00.000000+00:00", -1, "2026-11-30T02:00:00.000000+00:00"),  # already run out
])
def test_lease_until(now, hours, until):
    assert lease_until(now, hours) == until
    assert (lease_until(now, hours) > now) == (hours > 0)  # compared as strings, as the ledger does


def _claim(by: str, host: str | None = HERE, pid: int | None = 10, started: str | None = "b:100",
           status: str = "evaluating") -> SeenRow:
    return SeenRow(status=status, claimed_by=by, claimed_until="2026-11-30T15:00:00.000000+00:00", claim_host=host,
                   claim_pid=pid, claim_started=started)


def test_others_holders_are_other_runs_named_claims():
    rows = [_claim("me", pid=1), _claim("w2", pid=2), _claim("w3", pid=3, status="evaluated"),
            _claim("w4", host=None, pid=None, started=None), _claim("w5", host=THERE, pid=5), _claim("w2", pid=2)]
    assert others_holders(rows, "me") == {Holder(host=HERE, pid=2, started="b:100"),
                                          Holder(host=THERE, pid=5, started="b:100")}
    assert others_holders([], "me") == frozenset()


def test_to_check_names_only_this_hosts_pids():
    hs = [Holder(host=HERE, pid=2, started="b:1"), Holder(host=THERE, pid=3, started="b:1"),
          Holder(host=HERE, pid=4, started="b:9")]
    assert to_check(hs, HERE) == {2, 4}
    assert to_check(hs, "elsewhere") == set()


def test_gone_only_when_this_host_says_the_process_is_not_the_holder():
    dead = Holder(host=HERE, pid=2, started="b:100")  # no process has pid 2 now
    reused = Holder(host=HERE, pid=3, started="b:100")  # pid 3 is a process that started at another tick
    alive = Holder(host=HERE, pid=4, started="b:100")
    unchecked = Holder(host=HERE, pid=5, started="b:100")  # this host could not say
    far = Holder(host=THERE, pid=2, started="b:100")  # pid 2 here says nothing of another host's pid 2
    running = {2: None, 3: "b:250", 4: "b:100"}
    assert gone([dead, reused, alive, unchecked, far], HERE, running) == {dead, reused}
    assert gone([dead], THERE, running) == frozenset()  # seen from another host, nothing of this one is known


def test_evaluation_of_a_result_and_of_none():
    got = evaluation_of(Outcome(found=F, status="evaluated", run="r1", sae="a", content_hash="h-run",
                                model="gpt2"))
    assert got == {"content_hash": "h-run", "model": "gpt2", "run": "r1", "sae": "a", "spec": "/inbox/a",
                   "source": "dir:/inbox", "status": "evaluated", "reason": ""}
    # failed in scoring: the SAE's verdict; the listing's hash and model where the evaluation did not say
    got = evaluation_of(Outcome(found=F, status="failed", reason="nan", run="r1", sae="a"))
    assert (got["content_hash"], got["model"], got["status"], got["reason"]) == ("h-list", "sage-tiny", "failed",
                                                                                 "nan")
    assert evaluation_of(Outcome(found=F, status="skipped", run="r1", sae="a")) is None
    assert evaluation_of(Outcome(found=F, status="failed", reason="input stage")) is None  # no run: no result
    assert evaluation_of(Outcome(found=F, status="evaluated", run="r1")) is None  # no name in the run
    unhashed = F.model_copy(update={"content_hash": None})
    assert evaluation_of(Outcome(found=unhashed, status="evaluated", run="r1", sae="a")) is None
