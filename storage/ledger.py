"""The ledger: `SAGE_HOME/ledger.sqlite`, the one mutable state under SAGE_HOME (everything else is write-once).

    saes         one row per SAE a watch source listed: who it is (source, release, sae_id), how to load it (spec),
                 its model, hook and weights' content hash where known, first and last seen, its status
                 (new | evaluating | evaluated | failed | skipped) with the reason, the run that scored it and its
                 name in that run, and, while a watch run evaluates it, which run claimed it until when and which
                 process holds that claim (host, pid, the process's start)
    evaluations  append-only: one row per SAE a run scored (every `sage evaluate` and every watch run), by content hash

SQLite in WAL mode (readers never wait for the writer), a versioned schema (`PRAGMA user_version`, migrated forward
when opened), and every decision that writes taken inside one `BEGIN IMMEDIATE` transaction: two watch runs at once
serialise on it, so an SAE is claimed by exactly one of them. A claim names its holder (`sage_core.watch.plan.Holder`:
the host, the pid and when that process started): a run on the same host whose holder is no longer running (killed,
crashed, the machine rebooted; a new process that reuses the pid is not it) takes its SAEs over at once; a claim whose
holder is alive, runs on another host or is not named waits until its lease runs out.

A read-only handle (`Ledger(path, read_only=True)`, what a dry run uses) creates, migrates and writes nothing and opens
no file under the data root for writing, so it reads a ledger on a read-only data root too (as `sage leaderboard`
does, `storage.boards.read_evaluations`): the file is opened read-only and immutable (no journal, no shared memory, no
lock), or, where a writer's log (`ledger.sqlite-wal`) holds commits not yet in the file, a copy of both in a temporary
directory elsewhere; a read during which a writer changed the files (a checkpoint) is read again.

The ledger is never taken on trust: it is created whole (built beside its path, then linked into place, so no reader
ever finds a half-made or empty one), and every open checks it first: a file that exists but is empty or no SQLite
database, or one that SQLite's `PRAGMA integrity_check` finds damaged, is a one-line LedgerError saying to restore it
or move it aside, never read as "nothing evaluated yet" or as a wrong row. Nothing is ever written over a damaged one.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import polars as pl

from sage_core.scoring.across import EVALUATION_SCHEMA  # what `sage leaderboard` reads, one definition
from sage_core.watch.plan import Decision, Holder, Outcome, SeenRow, decide
from sage_core.watch.sources import FoundSAE
from storage.atomic import StoreError, partial_sibling
from storage.home import SageHome

SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 60.0
STATUSES = ("new", "evaluating", "evaluated", "failed", "skipped")

_SCHEMA_V1 = f"""
CREATE TABLE saes (
    source        TEXT NOT NULL,
    release       TEXT NOT NULL,
    sae_id        TEXT NOT NULL,
    spec          TEXT NOT NULL,
    model         TEXT NOT NULL,
    hook          TEXT NOT NULL DEFAULT '',
    content_hash  TEXT,
    first_seen    TEXT NOT NULL,
    last_seen     TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN {STATUSES!r}),
    reason        TEXT NOT NULL DEFAULT '',
    run           TEXT,
    sae           TEXT,
    claimed_by    TEXT,
    claimed_until TEXT,
    PRIMARY KEY (source, release, sae_id)
);
CREATE TABLE evaluations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash  TEXT NOT NULL,
    model         TEXT NOT NULL,
    run           TEXT NOT NULL,
    sae           TEXT NOT NULL,
    spec          TEXT NOT NULL,
    source        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('evaluated', 'failed')),
    reason        TEXT NOT NULL DEFAULT '',
    evaluated_at  TEXT NOT NULL,
    UNIQUE (content_hash, run, sae)
);
CREATE INDEX evaluations_by_hash ON evaluations (content_hash, status);
CREATE INDEX evaluations_by_model ON evaluations (model);
"""
# v2: a claim names the process that holds it (NULL in the claims of v1, which wait for their lease)
_CLAIM_HOLDER = """
ALTER TABLE saes ADD COLUMN claim_host TEXT;
ALTER TABLE saes ADD COLUMN claim_pid INTEGER;
ALTER TABLE saes ADD COLUMN claim_started TEXT
"""
MIGRATIONS = {1: _SCHEMA_V1, 2: _CLAIM_HOLDER}  # version -> the script that brings version-1 to it

SAE_COLUMNS = ("source", "release", "sae_id", "spec", "model", "hook", "content_hash", "first_seen", "last_seen",
               "status", "reason", "run", "sae", "claimed_by", "claimed_until", "claim_host", "claim_pid",
               "claim_started")
_INT_COLUMNS = frozenset({"claim_pid"})
READ_ATTEMPTS = 3  # a read-only read that a writer's checkpoint changed under it is read again, this many times in all
T = TypeVar("T")


def now_utc() -> str:
    """ISO-8601 UTC to the microsecond: sorts as time does."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class LedgerError(StoreError):
    """The ledger cannot be opened or read; the message says what to do."""


# -- who holds a claim -------------------------------------------------------------------------------------------------
def _text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def host_identity() -> str:
    """`<hostname>/<machine>/<pid namespace>`: where a pid names one process. The machine is /etc/machine-id (it
    survives a reboot; else the boot id, so a reboot makes another host); the pid namespace tells apart containers of
    one machine, whose pids do not name each other's processes."""
    machine = _text("/etc/machine-id")
    if not machine:
        boot = _text("/proc/sys/kernel/random/boot_id")
        machine = f"boot-{boot}" if boot else ""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{machine}/{ns}"


class _CannotTell(Exception):
    """This host cannot say whether a process runs (no /proc, no psutil, /proc unreadable)."""


def process_started(pid: int) -> str | None:
    """When process `pid` of this host started, as the host counts it: `<boot id>:<clock tick>` on Linux (exact; a
    later process reusing the pid started at another tick, a reboot changes the boot id), psutil's start time
    elsewhere. None when no such process runs, a zombie (killed, not yet reaped by its parent) included. _CannotTell
    where this host cannot say."""
    if pid <= 0:
        return None
    if os.path.isdir("/proc/self"):
        try:
            if os.readlink("/proc/self") != str(os.getpid()):  # a /proc of another pid namespace: its pids are not ours
                raise _CannotTell
        except OSError as e:
            raise _CannotTell from e
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError as e:
            raise _CannotTell from e
        fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and ')'
        if len(fields) < 20:
            raise _CannotTell
        if fields[0] in ("Z", "X", "x"):  # a zombie or a dead task: it has stopped running
            return None
        boot = _text("/proc/sys/kernel/random/boot_id")
        return f"{boot}:{fields[19]}"  # field 22 of /proc/<pid>/stat: the start time in clock ticks after boot
    try:
        import psutil
    except ImportError as e:
        raise _CannotTell from e
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{proc.create_time():.6f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as e:
        raise _CannotTell from e


def this_holder() -> Holder | None:
    """This process as the holder of the claims it makes; None where this host cannot tell when a process started
    (its claims then wait for their lease)."""
    try:
        started = process_started(os.getpid())
    except _CannotTell:
        return None
    return Holder(host=host_identity(), pid=os.getpid(), started=started) if started else None


def holder_gone(holder: Holder) -> bool:
    """True only when `holder` is known to have ended: it ran on this host and no process of its pid and start runs
    here now. A holder on another host, or one this host cannot check, is not known to have ended."""
    if holder.host != host_identity():
        return False
    try:
        return process_started(holder.pid) != holder.started
    except _CannotTell:
        return False


SQLITE_HEADER = b"SQLite format 3\x00"
# what to do with a damaged ledger: it is the history of every evaluation, so it is never rebuilt over
DAMAGED_FIX = ("restore it from a backup, or move it aside to start a new history (the next watch run then lists every "
               "SAE as new again)")


class Ledger:
    """One connection per call (sqlite3 connections are not shared across threads or processes)."""

    def __init__(self, path: Path, read_only: bool = False):
        """`read_only`: a handle that creates, migrates and writes nothing (a dry run; a read-only data root); the
        ledger must exist, and one of an older schema is read as it is (the columns it lacks read as empty)."""
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.exists():
                raise LedgerError(f"there is no ledger at {self.path} (no watch or evaluation recorded there yet)")
            self._read(self._version_of, check=True)
            return
        if not self.path.exists() and not self.path.is_symlink():
            self._create()
        with self._connect(check=True) as db:
            self._migrate(db)

    @classmethod
    def of(cls, home: SageHome, read_only: bool = False) -> Ledger:
        return cls(home.ledger_path(), read_only=read_only)

    # -- connection and schema -----------------------------------------------------------------------------------
    def _damaged(self, what: str) -> LedgerError:
        return LedgerError(f"the ledger {self.path} is damaged ({what}); {DAMAGED_FIX}")

    def _create(self) -> None:
        """A new ledger, whole: built (schema and WAL mode) in a sibling file, then hard-linked to its path, which
        fails if another process created it first (theirs is kept). A crash leaves no ledger, never an empty one."""
        tmp = partial_sibling(self.path)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._migrate(db)  # in the default rollback mode: at COMMIT everything is in the file itself
                db.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file's header
            finally:
                db.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it meanwhile: that one is the ledger
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._copy_new(tmp)  # a filesystem without hard links
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"cannot create the ledger {self.path} ({e}); check SAGE_HOME is writable and its disk "
                              "has room") from e
        finally:
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)

    def _copy_new(self, tmp: Path) -> None:
        """`tmp` copied to the ledger's path unless a file is there already (a reader may glimpse it half-copied)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(tmp.read_bytes())
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)  # ours, just made, never whole: no history in it
            raise

    def _check_file(self) -> None:
        """An existing ledger is a SQLite database: not empty (its history gone), not something else."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except FileNotFoundError as e:
            raise LedgerError(f"the ledger {self.path} is missing (moved or deleted while in use); rerun the "
                              "command") from e
        except OSError as e:
            raise LedgerError(f"cannot read the ledger {self.path} ({e.strerror or e}); check SAGE_HOME") from e
        if not head:
            wal = Path(f"{self.path}-wal")
            if not (wal.is_file() and wal.stat().st_size > 0):  # else SQLite's write-ahead log holds its pages
                raise self._damaged("it is empty, 0 bytes: every evaluation it recorded is gone")
        elif head != SQLITE_HEADER:
            raise self._damaged("not a SQLite database")

    def _check_integrity(self, db: sqlite3.Connection) -> None:
        """SQLite's own check of every page, row and index; anything but "ok" is damage."""
        rows = [r[0] for r in db.execute("PRAGMA integrity_check(20)").fetchall()]
        if rows != ["ok"]:
            more = f"; and {len(rows) - 1} more problem(s)" if len(rows) > 1 else ""
            raise self._damaged(f"integrity_check: {' '.join(str(rows[0]).split())}{more}")

    def _log_waits(self) -> bool:
        """A writer's write-ahead log holds commits not yet checkpointed into the file."""
        wal = Path(f"{self.path}-wal")
        try:
            return wal.is_file() and wal.stat().st_size > 0
        except OSError:
            return False

    def _uri(self, tmp: str | None) -> str:
        """mode=rw: opening never creates a ledger (`_create` does, whole); a moved one is missing, not new. A
        read-only handle opens nothing under the data root for writing: the file itself read-only and immutable, or,
        where a writer's log waits (`tmp` given), a copy of the file and its log in `tmp`, outside the data root (SQLite
        recovers the log into the copy)."""
        if not self.read_only:
            return f"{self.path.absolute().as_uri()}?mode=rw"
        if tmp is None:
            return f"{self.path.absolute().as_uri()}?mode=ro&immutable=1"
        copy = Path(tmp) / "ledger.sqlite"
        try:
            shutil.copyfile(self.path, copy)
            shutil.copyfile(f"{self.path}-wal", f"{copy}-wal")
        except OSError as e:
            raise LedgerError(f"cannot read the ledger {self.path} ({e.strerror or e}); check SAGE_HOME") from e
        return f"{copy.as_uri()}?mode=rw"

    def _signature(self) -> tuple:
        """What a writer changes: the ledger's and its log's size, time and inode (None for one that is not there)."""
        out = []
        for p in (self.path, Path(f"{self.path}-wal")):
            try:
                st = p.stat()
                out.append((st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def _read(self, fn: Callable[[sqlite3.Connection], T], check: bool = False) -> T:
        """`fn` on a connection, for reading. Read-only, a read during which a writer changed the files (a checkpoint
        under the immutable reader, whose torn pages could read as damage) is read again."""
        for attempt in range(READ_ATTEMPTS):
            before = self._signature() if self.read_only else None
            try:
                with self._connect(check=check) as db:
                    out = fn(db)
            except LedgerError:
                if self.read_only and attempt < READ_ATTEMPTS - 1 and self._signature() != before:
                    continue
                raise
            if not self.read_only or attempt == READ_ATTEMPTS - 1 or self._signature() == before:
                return out
        raise AssertionError("unreachable")

    @contextmanager
    def _connect(self, check: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection in WAL mode; `check`: SQLite's integrity check first, before anything could write."""
        self._check_file()  # every time: a file emptied or replaced since the last call is not read as a ledger
        copy_in = tempfile.TemporaryDirectory(prefix="sage-ledger-") if self.read_only and self._log_waits() \
            else nullcontext()
        with copy_in as tmp, self._open(self._uri(tmp), check) as db:
            yield db

    @contextmanager
    def _open(self, uri: str, check: bool) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True)
        except sqlite3.Error as e:
            if not self.path.exists():
                raise LedgerError(f"the ledger {self.path} is missing (moved or deleted while in use); rerun the "
                                  "command") from e
            raise LedgerError(f"cannot open the ledger {self.path} ({e}); check SAGE_HOME is writable") from e
        try:
            db.row_factory = sqlite3.Row
            if self.read_only:
                db.execute("PRAGMA query_only=ON")
            if check:
                self._check_integrity(db)
            if not self.read_only:
                if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                    raise LedgerError(f"the ledger {self.path} cannot use WAL mode (a network filesystem?); put "
                                      "SAGE_HOME on a local disk")
                db.execute("PRAGMA foreign_keys=ON")
            yield db
        except sqlite3.DatabaseError as e:
            text = str(e)
            if "locked" in text:
                raise LedgerError(f"the ledger {self.path} stayed locked for {BUSY_TIMEOUT_S:g} s; another watch "
                                  "run holds it: retry when it is done") from e
            if "not a database" in text or "malformed" in text:
                raise self._damaged(text) from e
            if self.read_only and "no such table" in text:
                raise LedgerError(f"the ledger {self.path} holds no SAGE tables ({text}); {DAMAGED_FIX}") from e
            raise LedgerError(f"the ledger {self.path} could not be used ({type(e).__name__}: {text}); check the "
                              "disk has room and SAGE_HOME is writable, then retry") from e
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken before anything is read, so a decision and what it
        writes are never interleaved with another process's."""
        if self.read_only:
            raise LedgerError(f"the ledger {self.path} was opened read-only (a dry run) and is not written")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _version_of(self, db: sqlite3.Connection) -> int:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(f"the ledger {self.path} has schema version {version}, newer than this SAGE's "
                              f"{SCHEMA_VERSION}; upgrade SAGE")
        return version

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Brought forward in place, in one transaction (a crash leaves the old version whole): each migration only
        adds, so every row and evaluation is kept."""
        if self._version_of(db) == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated meanwhile
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={v}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def schema_version(self) -> int:
        return self._read(lambda db: db.execute("PRAGMA user_version").fetchone()[0])

    def integrity(self) -> str:
        return self._read(lambda db: db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- watch runs ----------------------------------------------------------------------------------------------
    def _seen(self, db: sqlite3.Connection, found: list[FoundSAE]) -> dict[tuple[str, str, str], SeenRow]:
        out = {}
        for f in found:
            row = db.execute("SELECT * FROM saes WHERE source=? AND release=? AND sae_id=?", f.key).fetchone()
            if row is not None:  # a ledger of an older schema, read as it is, lacks the newer columns
                cols = set(row.keys())  # (`k in row` would look among the values)
                out[f.key] = SeenRow(**{k: row[k] for k in SeenRow.model_fields if k in cols})
        return out

    def _gone(self, seen: dict[tuple[str, str, str], SeenRow], owner: str) -> frozenset[Holder]:
        """The holders of other runs' claims among `seen` that are known to have ended (on this host)."""
        holders = {r.holder for r in seen.values() if r.status == "evaluating" and r.claimed_by != owner}
        return frozenset(h for h in holders if h is not None and holder_gone(h))

    def _decide(self, db: sqlite3.Connection, found: list[FoundSAE], owner: str, now: str,
                limit: int | None) -> list[Decision]:
        seen = self._seen(db, found)
        return decide(found, seen, self._scored(db, _hashes(found)), owner, now, limit, self._gone(seen, owner))

    def _scored(self, db: sqlite3.Connection, hashes: set[str]) -> dict[str, tuple[str, str]]:
        """content hash -> (run, sae) of its latest successful evaluation, for the hashes asked about."""
        out = {}
        for h in hashes:
            row = db.execute("SELECT run, sae FROM evaluations WHERE content_hash=? AND status='evaluated' "
                             "ORDER BY evaluated_at DESC, id DESC LIMIT 1", (h,)).fetchone()
            if row is not None:
                out[h] = (row["run"], row["sae"])
        return out

    def plan(self, found: list[FoundSAE], owner: str, limit: int | None = None) -> list[Decision]:
        """What each found SAE is to this run (`sage_core.watch.plan.decide`), read only: a dry run."""
        now = now_utc()
        return self._read(lambda db: self._decide(db, found, owner, now, limit))

    def claim(self, found: list[FoundSAE], owner: str, lease_hours: float, limit: int | None = None,
              holder: Holder | None = None) -> list[Decision]:
        """Decide and record, in one transaction: every found SAE is seen now; those to evaluate are claimed by
        `owner` for `lease_hours` (another run sees them as busy), held by `holder` (default: this process); claims
        of other runs whose holder has ended pass to `owner` at once; unchanged copies of weights already scored are
        recorded as evaluated by the run that scored them."""
        stamp = now_utc()
        until = (datetime.fromisoformat(stamp) + timedelta(hours=lease_hours)).isoformat(timespec="microseconds")
        holder = holder or this_holder()
        held = (holder.host, holder.pid, holder.started) if holder else (None, None, None)
        with self._write() as db:
            decisions = self._decide(db, found, owner, stamp, limit)
            for d in decisions:
                f = d.found
                db.execute("INSERT INTO saes (source, release, sae_id, spec, model, hook, content_hash, first_seen, "
                           "last_seen, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'new') "
                           "ON CONFLICT (source, release, sae_id) DO UPDATE SET last_seen=excluded.last_seen, "
                           "spec=excluded.spec, model=excluded.model, hook=excluded.hook",
                           (*f.key, f.spec, f.model, f.hook, f.content_hash, stamp, stamp))
                if d.action == "evaluate":
                    db.execute("UPDATE saes SET status='evaluating', reason=?, content_hash=?, claimed_by=?, "
                               "claimed_until=?, claim_host=?, claim_pid=?, claim_started=? "
                               "WHERE source=? AND release=? AND sae_id=?",
                               (d.reason, f.content_hash, owner, until, *held, *f.key))
                elif d.action == "same-weights":
                    db.execute(f"UPDATE saes SET status='evaluated', reason=?, content_hash=?, run=?, sae=?, "
                               f"{_NO_CLAIM} WHERE source=? AND release=? AND sae_id=?",
                               (d.reason, f.content_hash, d.run, d.sae, *f.key))
        return decisions

    def settle(self, owner: str, outcomes: list[Outcome]) -> int:
        """Record what became of the SAEs `owner` claimed; an SAE whose claim passed to another run (the lease
        expired) is left to that run. Returns how many rows were settled."""
        stamp, n = now_utc(), 0
        with self._write() as db:
            for o in outcomes:
                f = o.found
                cur = db.execute(f"UPDATE saes SET status=?, reason=?, run=?, sae=?, content_hash=COALESCE(?, "
                                 f"content_hash), {_NO_CLAIM} WHERE source=? AND release=? "
                                 "AND sae_id=? AND claimed_by=? AND status='evaluating'",
                                 (o.status, o.reason, o.run, o.sae, o.content_hash, *f.key, owner))
                n += cur.rowcount
                if o.status in ("evaluated", "failed") and o.run and o.sae and (o.content_hash or f.content_hash):
                    _append(db, o.content_hash or f.content_hash, o.model or f.model, o.run, o.sae, f.spec,
                            f.source, o.status, o.reason, stamp, name_source=True)
        return n

    def release(self, owner: str) -> int:
        """Give back every claim `owner` still holds (a run that stops early): they are new again for the next."""
        with self._write() as db:
            return db.execute(f"UPDATE saes SET status='new', {_NO_CLAIM} "
                              "WHERE claimed_by=? AND status='evaluating'", (owner,)).rowcount

    # -- evaluations of any run -----------------------------------------------------------------------------------
    def record_run(self, run: str, model: str, rows: list[dict[str, str]], source: str = "evaluate") -> int:
        """Append one evaluation per SAE a run scored: rows of {content_hash, sae, spec, status, reason}. A run
        recorded again (a cached rerun) adds nothing. Returns how many rows were added."""
        stamp, n = now_utc(), 0
        with self._write() as db:
            for r in rows:
                n += _append(db, r["content_hash"], model, run, r["sae"], r["spec"], r.get("source", source),
                             r["status"], r.get("reason", ""), stamp)
        return n

    def evaluations(self, model: str | None = None) -> pl.DataFrame:
        """Every evaluation recorded (of `model` only, when given), oldest first."""
        cols = ", ".join(EVALUATION_SCHEMA)

        def read(db: sqlite3.Connection) -> list[sqlite3.Row]:
            if model is None:
                return db.execute(f"SELECT {cols} FROM evaluations ORDER BY evaluated_at, id").fetchall()
            return db.execute(f"SELECT {cols} FROM evaluations WHERE model=? ORDER BY evaluated_at, id",
                              (model,)).fetchall()

        rows = self._read(read)
        return pl.DataFrame([dict(r) for r in rows], schema=EVALUATION_SCHEMA, orient="row")

    def saes(self, status: str | None = None) -> pl.DataFrame:
        """The SAEs watch runs have seen (with `status` only, when given)."""
        def read(db: sqlite3.Connection) -> list[sqlite3.Row]:
            have = {r["name"] for r in db.execute("PRAGMA table_info(saes)").fetchall()}  # an older schema: fewer
            q = f"SELECT {', '.join(c if c in have else f'NULL AS {c}' for c in SAE_COLUMNS)} FROM saes"
            return (db.execute(q + " WHERE status=? ORDER BY source, release, sae_id", (status,)) if status
                    else db.execute(q + " ORDER BY source, release, sae_id")).fetchall()

        rows = self._read(read)
        schema = {c: pl.Int64 if c in _INT_COLUMNS else pl.String for c in SAE_COLUMNS}
        return pl.DataFrame([dict(r) for r in rows], schema=schema, orient="row")


_NO_CLAIM = "claimed_by=NULL, claimed_until=NULL, claim_host=NULL, claim_pid=NULL, claim_started=NULL"


def _hashes(found: list[FoundSAE]) -> set[str]:
    return {f.content_hash for f in found if f.content_hash}


def _append(db: sqlite3.Connection, content_hash: str, model: str, run: str, sae: str, spec: str, source: str,
            status: str, reason: str, stamp: str, name_source: bool = False) -> int:
    """One evaluation, once; `name_source`: the watch knows where the SAE came from better than the evaluation it
    ran (which recorded it first, as "evaluate"), so its source and spec replace those."""
    on_conflict = ("DO UPDATE SET source=excluded.source, spec=excluded.spec" if name_source else "DO NOTHING")
    return db.execute("INSERT INTO evaluations (content_hash, model, run, sae, spec, source, status, reason, "
                      "evaluated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (content_hash, run, sae) "
                      + on_conflict, (content_hash, model, run, sae, spec, source, status, reason, stamp)).rowcount

