"""The ledger: schema version and WAL, claims and outcomes, evaluations, a damaged file, and two processes claiming
the same SAEs at once (each claimed exactly once, the database whole)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from sage_core.watch.plan import Outcome
from sage_core.watch.sources import FoundSAE
from storage.home import SageHome
from storage.ledger import SCHEMA_VERSION, Ledger, LedgerError


def found(i: int, h: str | None = None) -> FoundSAE:
    return FoundSAE(source="dir:/inbox", sae_id=f"/inbox/sae-{i}", spec=f"/inbox/sae-{i}", model="sage-tiny",
                    hook="blocks.0.hook_resid_post", content_hash=h or f"hash-{i}")


def test_schema_wal_and_version(tmp_path):
    led = Ledger.of(SageHome(tmp_path))
    assert led.path == tmp_path / "ledger.sqlite"
    assert led.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(led.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Ledger(led.path).schema_version() == SCHEMA_VERSION  # reopening migrates nothing
    with sqlite3.connect(led.path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="newer than this SAGE"):
        Ledger(led.path)


def test_a_damaged_ledger_is_one_line(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerError, match="damaged.*move it aside"):
        Ledger(path)
    assert path.read_bytes() == b"not a database at all" * 100  # nothing written over it


def test_claim_settle_then_nothing_is_new(tmp_path):
    led = Ledger.of(SageHome(tmp_path))
    fs = [found(i) for i in range(3)]
    ds = led.claim(fs, "run-1", lease_hours=1)
    assert [d.action for d in ds] == ["evaluate"] * 3
    assert led.saes("evaluating").height == 3
    assert [d.action for d in led.claim(fs, "run-2", lease_hours=1)] == ["busy"] * 3
    outcomes = [Outcome(found=fs[0], status="evaluated", run="r1", sae="sae-0", model="sage-tiny"),
                Outcome(found=fs[1], status="failed", reason="boom", run="r1", sae="sae-1"),
                Outcome(found=fs[2], status="skipped", reason="no model")]
    assert led.settle("run-1", outcomes) == 3
    rows = {r["sae_id"]: r for r in led.saes().to_dicts()}
    assert rows["/inbox/sae-0"]["status"] == "evaluated" and rows["/inbox/sae-0"]["run"] == "r1"
    assert rows["/inbox/sae-1"]["reason"] == "boom" and rows["/inbox/sae-2"]["status"] == "skipped"
    assert all(r["claimed_by"] is None for r in rows.values())
    ev = led.evaluations()
    assert ev.select("content_hash", "run", "sae", "status").rows() == [("hash-0", "r1", "sae-0", "evaluated"),
                                                                       ("hash-1", "r1", "sae-1", "failed")]
    again = led.claim(fs, "run-3", lease_hours=1)
    assert [d.action for d in again] == ["unchanged", "unchanged", "evaluate"]  # the skipped one is looked at again
    changed = led.claim([found(0, "hash-0b")], "run-3", lease_hours=1)
    assert changed[0].action == "evaluate" and "weights changed" in changed[0].reason


def test_same_weights_elsewhere_are_not_scored_again(tmp_path):
    led = Ledger.of(SageHome(tmp_path))
    assert led.record_run("run-zoo", "sage-tiny", [{"content_hash": "hash-7", "sae": "res-l1", "spec": "zoo:res-l1",
                                                    "status": "evaluated"}]) == 1
    assert led.record_run("run-zoo", "sage-tiny", [{"content_hash": "hash-7", "sae": "res-l1", "spec": "zoo:res-l1",
                                                    "status": "evaluated"}]) == 0  # a cached rerun adds nothing
    d = led.claim([found(7)], "w1", lease_hours=1)[0]
    assert (d.action, d.run, d.sae) == ("same-weights", "run-zoo", "res-l1")
    row = led.saes().to_dicts()[0]
    assert (row["status"], row["run"], row["sae"]) == ("evaluated", "run-zoo", "res-l1")
    assert led.evaluations(model="other").height == 0 and led.evaluations(model="sage-tiny").height == 1


def test_expired_claims_pass_on_and_the_old_owner_cannot_settle(tmp_path):
    led = Ledger.of(SageHome(tmp_path))
    f = found(1)
    led.claim([f], "dead-run", lease_hours=-1)  # already expired
    d = led.claim([f], "live-run", lease_hours=1)[0]
    assert d.action == "evaluate" and "expired" in d.reason
    assert led.settle("dead-run", [Outcome(found=f, status="failed", reason="late")]) == 0
    assert led.settle("live-run", [Outcome(found=f, status="evaluated", run="r", sae="s")]) == 1
    assert led.release("live-run") == 0
    # the dead run comes back after the live one settled: it cannot overwrite that result
    assert led.settle("dead-run", [Outcome(found=f, status="failed", reason="late", run="r-old", sae="s")]) == 0
    row = led.saes().to_dicts()[0]
    assert (row["status"], row["run"]) == ("evaluated", "r")


class _FullDisk(sqlite3.Connection):
    def execute(self, sql, *args):
        if sql.startswith("BEGIN"):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def test_a_ledger_that_cannot_be_written_is_not_called_damaged(tmp_path, monkeypatch):
    led = Ledger.of(SageHome(tmp_path))
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, **kw, factory=_FullDisk))
    with pytest.raises(LedgerError) as err:
        led.claim([found(1)], "w", lease_hours=1)
    assert "disk is full" in str(err.value) and "damaged" not in str(err.value) and "\n" not in str(err.value)


def test_plan_writes_nothing(tmp_path):
    led = Ledger.of(SageHome(tmp_path))
    assert [d.action for d in led.plan([found(1)], "x")] == ["evaluate"]
    assert led.saes().height == 0


def _claimer(path: str, owner: str, n: int, batch: int, barrier, out) -> None:
    """Claim every SAE, batch by batch, each batch at the same moment as the other process (a barrier per batch),
    then settle what was won."""
    led = Ledger(path)
    fs = [found(i) for i in range(n)]
    mine: set[str] = set()
    busy = 0
    for start in range(0, n, batch):
        barrier.wait()
        for d in led.claim(fs[start:start + batch], owner, lease_hours=1):
            if d.action == "evaluate":
                mine.add(d.found.sae_id)
            busy += d.action in ("busy", "unchanged")  # unchanged: the winner has settled it already
    won = [f for f in fs if f.sae_id in mine]
    settled = led.settle(owner, [Outcome(found=f, status="evaluated", run=owner, sae=f.sae_id.rsplit("/", 1)[1])
                                 for f in won])
    out.put((owner, sorted(mine), settled, busy))


def test_two_processes_never_claim_the_same_sae(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    Ledger(path)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(path, f"watch-{k}", 60, 3, barrier, out)) for k in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    got = {owner: mine for owner, mine, _, _ in results}
    assert all(settled == len(mine) for _, mine, settled, _ in results)
    # every SAE was decided by both at the same moment: one claimed it, the other saw it claimed (or settled)
    assert sum(busy for *_, busy in results) == 60
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    a, b = got["watch-0"], got["watch-1"]
    assert not set(a) & set(b) and len(a) + len(b) == 60
    led = Ledger(path)
    assert led.integrity() == "ok"
    assert led.saes("evaluated").height == 60 and led.evaluations().height == 60
    assert led.evaluations().group_by("content_hash").len()["len"].max() == 1
