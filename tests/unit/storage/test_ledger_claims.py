"""The ledger's claims name their holder (issue 27 item 8): a killed watch run's claims pass on at once on its host;
those of a live process, of another host or of no named holder wait for their lease."""

from __future__ import annotations

import os
import sqlite3
import time

from sage_core.watch.plan import Outcome
from storage.home import SageHome
from storage.ledger import Ledger
from tests.unit.storage.ledger_helpers import found

_CLAIMER = """
import sys, time
from sage_core.watch.sources import FoundSAE
from storage.ledger import Ledger
fs = [FoundSAE(source="dir:/inbox", sae_id=f"/inbox/sae-{i}", spec=f"/inbox/sae-{i}", model="sage-tiny",
               content_hash=f"hash-{i}") for i in range(2)]
print([d.action for d in Ledger(sys.argv[1]).claim(fs, "killed-watch", lease_hours=12)], flush=True)
time.sleep(600)
"""


def _claiming_process(path):
    """A process that claims two SAEs for 12 hours, as a watch run does, then works on (sleeps) until killed."""
    import subprocess
    import sys

    from tests.acceptance.cli import ROOT

    proc = subprocess.Popen([sys.executable, "-c", _CLAIMER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "['evaluate', 'evaluate']"
    return proc


def test_a_killed_watch_runs_claims_pass_on_at_once_on_its_host(tmp_path):
    """Before: a watch run killed while it held claims kept its SAEs busy for the whole 12-hour lease, and a rerun
    evaluated nothing. Now a claim names its process (host, pid, start): while that process lives its SAEs are busy;
    once it is killed (a zombie not yet reaped, then reaped) the next run on the host takes them over at once."""
    import signal

    led = Ledger.of(SageHome(tmp_path))
    fs = [found(i) for i in range(2)]
    proc = _claiming_process(led.path)
    try:
        busy = led.claim(fs, "rerun", lease_hours=12)
        assert [d.action for d in busy] == ["busy", "busy"]  # alive: it works on them
        proc.send_signal(signal.SIGKILL)
        for _ in range(100):  # killed, not reaped: a zombie has stopped running
            if _proc_state(proc.pid) == "Z":
                break
            time.sleep(0.05)
        assert [d.action for d in led.plan(fs, "rerun")] == ["evaluate", "evaluate"]
        assert f"(pid {proc.pid} on " in busy[0].reason
        row = led.saes().to_dicts()[0]
        assert (row["claimed_by"], row["claim_pid"]) == ("killed-watch", proc.pid) and row["claim_host"]
    finally:
        proc.kill()
        proc.wait()
    ds = led.claim(fs, "rerun", lease_hours=12)
    assert [d.action for d in ds] == ["evaluate", "evaluate"]
    assert f"watch run killed-watch that claimed it (pid {proc.pid} on" in ds[0].reason
    assert "is no longer running" in ds[0].reason
    rows = led.saes().to_dicts()
    assert {(r["claimed_by"], r["claim_pid"]) for r in rows} == {("rerun", os.getpid())}
    assert led.settle("killed-watch", [Outcome(found=fs[0], status="failed", reason="late")]) == 0
    assert led.settle("rerun", [Outcome(found=f, status="evaluated", run="r", sae="s") for f in fs]) == 2


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_claims_of_a_live_process_another_host_or_no_named_holder_wait_for_their_lease(tmp_path):
    from sage_core.watch.plan import Holder
    from storage.ledger import host_identity, process_started, this_holder

    led = Ledger.of(SageHome(tmp_path))
    me = this_holder()
    assert me is not None and me.pid == os.getpid() and me.host == host_identity()
    assert process_started(os.getpid()) == me.started and process_started(2 ** 22 + 1) is None
    fs = [found(i) for i in range(4)]
    elsewhere = Holder(host="another-host/its-machine/pid:[1]", pid=2 ** 22 + 1, started="x:1")  # no such pid here
    reused = Holder(host=me.host, pid=os.getpid(), started=f"{me.started}0")  # this pid, another process's start
    led.claim(fs[:1], "live-run", lease_hours=12)  # held by this (live) process
    led.claim(fs[1:2], "far-run", lease_hours=12, holder=elsewhere)
    led.claim(fs[2:3], "old-run", lease_hours=12, holder=reused)
    with sqlite3.connect(led.path) as db:  # a claim made before claims named their process
        db.execute("UPDATE saes SET claim_host=NULL, claim_pid=NULL, claim_started=NULL WHERE sae_id='/inbox/sae-0'")
    led.claim(fs[3:4], "unnamed-run", lease_hours=12)
    with sqlite3.connect(led.path) as db:
        db.execute("UPDATE saes SET claim_host=NULL, claim_pid=NULL, claim_started=NULL WHERE sae_id='/inbox/sae-3'")
    led.claim(fs[:1], "live-run", lease_hours=12)
    got = {d.found.sae_id: d for d in led.claim(fs, "rerun", lease_hours=12)}
    assert [got[f.sae_id].action for f in fs] == ["busy", "busy", "evaluate", "busy"]
    assert "is no longer running" in got["/inbox/sae-2"].reason  # the pid lives, but not the process that claimed
    # each waits for its lease only
    with sqlite3.connect(led.path) as db:
        db.execute("UPDATE saes SET claimed_until='2000-01-01T00:00:00.000000+00:00' WHERE claimed_by!='rerun'")
    assert [d.action for d in led.claim(fs, "rerun", lease_hours=12)] == ["evaluate"] * 4


