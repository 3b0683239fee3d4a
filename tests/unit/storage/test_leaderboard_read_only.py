"""`sage leaderboard` reads and never writes (issue #27, "one line, not a traceback"): it needed write access to the
data root (the ledger was opened read-write, in WAL mode, which creates and removes `ledger.sqlite-wal` and `-shm`
beside it). The tests run as root, where a read-only directory does not stop a write, so they check what a read-only
data root needs: nothing under it changes, and no file under it is opened for writing (SQLite's included)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.acceptance.cli import run_in_process
from tests.acceptance.test_cli_leaderboard import home  # noqa: F401  (the leaderboard's data root fixture)
from tests.unit.storage.ledger_helpers import write_opens


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` with what a write would change: kind, size, mtime (a directory's changes when an entry
    is created or removed in it), inode."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, st.st_ino)
    return out


@pytest.fixture
def writes(monkeypatch, home):  # noqa: F811
    """Every file under the data root opened for writing (SQLite's included)."""
    return write_opens(monkeypatch, home.root)


def test_sage_leaderboard_changes_nothing_and_opens_nothing_for_writing(home, writes):  # noqa: F811
    before = _tree(home.root)
    r = run_in_process(["leaderboard"], home.root)
    assert r.returncode == 0, r.stdout
    assert "ground truth 2f88f530" in r.stdout, r.stdout
    assert writes == []
    assert _tree(home.root) == before


def test_a_ledger_being_written_is_read_with_its_write_ahead_log(home, writes):  # noqa: F811
    """A watch run holding the ledger open (its `-wal` holds the newest rows): they are shown, and still nothing is
    written under the data root."""
    from storage.boards import ledger_evaluations
    from storage.ledger import Ledger

    holder = sqlite3.connect(home.ledger_path())  # keeps the log from being folded into the file on close
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("SELECT 1 FROM evaluations").fetchall()
    writes.clear()
    Ledger.of(home).record_run("nightly-3", "sage-tiny", [{"content_hash": "dddd0000", "sae": "D", "spec": "zoo:D",
                                                          "status": "evaluated"}])
    writes.clear()
    assert Path(f"{home.ledger_path()}-wal").stat().st_size > 0
    before = _tree(home.root)
    got = ledger_evaluations(home)
    after = _tree(home.root)
    holder.close()
    assert "nightly-3" in got.get_column("run").to_list() and got.height == 5
    assert writes == [] and after == before


def test_a_ledger_changed_by_a_writer_while_it_was_read_is_read_again(home, monkeypatch):  # noqa: F811
    """A checkpoint that rewrites the file under the read-only reader is not reported as damage. The leaderboard reads
    through the ledger's one read-only reader (`Ledger._read_once`, each attempt of `Ledger._read`)."""
    from storage import boards
    from storage.ledger import Ledger, LedgerError

    real, calls = Ledger._read_once, []

    def counted(led, fn, check):
        calls.append(led.path)
        return real(led, fn, check)

    monkeypatch.setattr(Ledger, "_read_once", counted)
    assert boards.ledger_evaluations(home).height == 4
    reads = len(calls)  # what an undisturbed read takes (the open's check, then the evaluations)
    assert reads >= 1 and calls[0] == home.ledger_path()

    def torn(led, fn, check):
        calls.append(led.path)
        if len(calls) == 1:  # a writer checkpoints meanwhile: the file changes, the torn read looks damaged
            os.utime(led.path, ns=(1, 1))
            raise LedgerError(f"the ledger {led.path} is damaged (database disk image is malformed)")
        return real(led, fn, check)

    calls.clear()
    monkeypatch.setattr(Ledger, "_read_once", torn)
    assert boards.ledger_evaluations(home).height == 4 and len(calls) == reads + 1  # that one read again, once
    calls.clear()
    monkeypatch.setattr(Ledger, "_read_once", counted)
    with pytest.raises(LedgerError, match="0 bytes"):  # damage that stays is still damage, at once
        home.ledger_path().write_bytes(b"")
        boards.ledger_evaluations(home)
    assert len(calls) == 1
