"""The ledger: schema version and WAL, claims and outcomes, evaluations, a damaged file, and two processes claiming
the same SAEs at once (each claimed exactly once, the database whole)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from sage_core.watch.plan import Outcome
from storage.home import SageHome
from storage.ledger import SCHEMA_VERSION, Ledger, LedgerError
from tests.unit.storage.ledger_helpers import found, write_opens


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

    monkeypatch.setattr("storage.ledger_file.os.link", boom)
    with pytest.raises(LedgerError, match="No space left"):
        Ledger(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert Ledger(path).schema_version() == SCHEMA_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]


def _v1_ledger(path):
    """A ledger as SAGE wrote it before claims named their process (schema version 1), with a history and a claim."""
    from storage.ledger import MIGRATIONS

    with sqlite3.connect(path, isolation_level=None) as db:
        for statement in MIGRATIONS[1].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("PRAGMA user_version=1")
        db.execute("PRAGMA journal_mode=WAL")
        stamp = "2026-01-01T00:00:00.000000+00:00"
        db.execute("INSERT INTO saes VALUES ('dir:/inbox', '', '/inbox/sae-1', '/inbox/sae-1', 'sage-tiny', 'h', "
                   "'hash-1', ?, ?, 'evaluated', '', 'r1', 'sae-1', NULL, NULL)", (stamp, stamp))
        db.execute("INSERT INTO saes VALUES ('dir:/inbox', '', '/inbox/sae-2', '/inbox/sae-2', 'sage-tiny', 'h', "
                   "'hash-2', ?, ?, 'evaluating', 'never seen', NULL, NULL, 'old-run', "
                   "'2999-01-01T00:00:00.000000+00:00')", (stamp, stamp))
        db.execute("INSERT INTO evaluations (content_hash, model, run, sae, spec, source, status, evaluated_at) "
                   "VALUES ('hash-1', 'sage-tiny', 'r1', 'sae-1', '/inbox/sae-1', 'dir:/inbox', 'evaluated', ?)",
                   (stamp,))
    db.close()


def _table(path, table):
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    db.close()
    return rows


def test_a_ledger_of_schema_1_is_read_as_it_is_then_migrated_in_place(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _v1_ledger(path)
    saes, evaluations = _table(path, "saes"), _table(path, "evaluations")
    fs = [found(1), found(2)]
    before = path.read_bytes()
    ro = Ledger(path, read_only=True)  # a dry run: no migration, nothing written
    assert [d.action for d in ro.plan(fs, "w")] == ["unchanged", "busy"]
    assert ro.saes()["claim_pid"].to_list() == [None, None] and ro.evaluations().height == 1
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]

    led = Ledger(path)
    assert led.schema_version() == SCHEMA_VERSION == 2 and led.integrity() == "ok"
    after = _table(path, "saes")
    assert [{k: r[k] for k in saes[0]} for r in after] == saes  # every row and column kept
    assert all(r["claim_host"] is None and r["claim_pid"] is None for r in after)
    assert _table(path, "evaluations") == evaluations
    assert [d.action for d in led.claim(fs, "w", lease_hours=1)] == ["unchanged", "busy"]  # an unnamed claim waits


def _state(root):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in Path(root).iterdir()}


def test_a_read_only_handle_opens_nothing_for_writing_and_changes_nothing(tmp_path, monkeypatch):
    """What a dry run opens (the one-line case of issue 27: `sage watch --dry-run` needed write access to the data
    root). The tests run as root, whom a read-only directory does not stop, so they check what a read-only data root
    needs: no file under it is opened for writing (SQLite's included), and nothing there changes; writes are refused.
    With a writer's log holding a commit not yet in the file, that commit is read (from a copy elsewhere)."""
    led = Ledger.of(SageHome(tmp_path))
    led.claim([found(1)], "w", lease_hours=1)
    led.settle("w", [Outcome(found=found(1), status="evaluated", run="r", sae="s")])
    before = _state(tmp_path)
    assert sorted(before) == ["ledger.sqlite"]
    with monkeypatch.context() as m:
        writes = write_opens(m, tmp_path)
        ro = Ledger.of(SageHome(tmp_path), read_only=True)
        assert [d.action for d in ro.plan([found(1), found(2)], "x")] == ["unchanged", "evaluate"]
        assert ro.evaluations().height == 1 and ro.saes().height == 1 and ro.integrity() == "ok"
        with pytest.raises(LedgerError, match="read-only"):
            ro.claim([found(2)], "x", lease_hours=1)
        assert writes == []
    assert _state(tmp_path) == before

    writer = sqlite3.connect(led.path, isolation_level=None)  # a watch run that wrote and has not checkpointed
    try:
        writer.execute("INSERT INTO evaluations (content_hash, model, run, sae, spec, source, status, evaluated_at) "
                       "VALUES ('hash-2', 'sage-tiny', 'r2', 'sae-2', '/inbox/sae-2', 'x', 'evaluated', 'now')")
        assert Path(f"{led.path}-wal").stat().st_size > 0
        waiting = _state(tmp_path)
        with monkeypatch.context() as m:
            writes = write_opens(m, tmp_path)
            assert [d.action for d in ro.plan([found(2)], "x")] == ["same-weights"]  # the logged commit is read
            assert ro.evaluations().height == 2
            assert writes == []
        assert _state(tmp_path) == waiting
    finally:
        writer.close()
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(tmp_path / "none.sqlite", read_only=True)
    assert not (tmp_path / "none.sqlite").exists()
