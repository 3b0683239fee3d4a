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


def _ledger_with_history(tmp_path):
    led = Ledger.of(SageHome(tmp_path))
    led.record_run("r1", "sage-tiny", [{"content_hash": f"{i:016x}", "sae": f"sae-{i}", "spec": f"zoo:sae-{i}",
                                        "status": "evaluated"} for i in range(1, 4)])
    assert not led.path.with_name("ledger.sqlite-wal").exists()  # every connection closed: all in the main file
    return led


def test_a_changed_byte_that_integrity_check_catches_is_refused(tmp_path):
    """One byte of a content hash changed in the evaluations table (its indexes keep the old one): SQLite reads the
    row as it is, so the leaderboard would show a wrong hash; PRAGMA integrity_check sees the row and index differ."""
    led = _ledger_with_history(tmp_path)
    good = led.path.read_bytes()
    hit = None
    for at in (i for i in range(len(good)) if good.startswith(b"0000000000000002", i)):
        bad = bytearray(good)
        bad[at + 15] = ord("9")
        led.path.write_bytes(bytes(bad))
        with sqlite3.connect(led.path) as db:
            if "0000000000000009" in [r[0] for r in db.execute("SELECT content_hash FROM evaluations")]:
                hit = bytes(bad)
                break
    assert hit is not None, "no copy of the hash in the table itself"
    with sqlite3.connect(led.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    with pytest.raises(LedgerError) as err:
        Ledger(led.path).evaluations()
    msg = str(err.value)
    assert "\n" not in msg and str(led.path) in msg and "damaged" in msg and "integrity_check" in msg
    assert "restore it from a backup" in msg and "move it aside" in msg
    assert led.path.read_bytes() == hit, "nothing written over it"


def test_a_zero_byte_ledger_is_not_an_empty_history(tmp_path):
    from storage.boards import ledger_evaluations

    led = _ledger_with_history(tmp_path)
    led.path.write_bytes(b"")
    for read in (lambda: Ledger(led.path).evaluations(), lambda: ledger_evaluations(SageHome(tmp_path))):
        with pytest.raises(LedgerError) as err:
            read()
        msg = str(err.value)
        assert "\n" not in msg and str(led.path) in msg and "0 bytes" in msg and "restore it from a backup" in msg
    assert led.path.read_bytes() == b"", "the damaged ledger is not recreated"
    with pytest.raises(LedgerError, match="0 bytes"):
        led.claim([found(1)], "w", lease_hours=1)
    assert led.path.read_bytes() == b""


def test_sage_leaderboard_on_a_damaged_ledger_is_one_line(tmp_path):
    from tests.acceptance.cli import one_line_error, run_in_process

    led = _ledger_with_history(tmp_path)
    led.path.write_bytes(b"")
    r = run_in_process(["leaderboard"], tmp_path)
    assert r.returncode == 2 and one_line_error(r), r.stdout
    assert "nothing evaluated yet" not in r.stdout and "0 bytes" in r.stdout


def test_a_ledger_is_created_whole_or_not_at_all(tmp_path, monkeypatch):
    """The ledger is built beside its path and linked into place: a crash while it is created leaves no ledger (and no
    zero-byte file that the next open would have to call damaged), and an existing file is never replaced."""
    path = tmp_path / "ledger.sqlite"

    def boom(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("storage.ledger.os.link", boom)
    with pytest.raises(LedgerError, match="No space left"):
        Ledger(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert Ledger(path).schema_version() == SCHEMA_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]
