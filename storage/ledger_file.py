"""The ledger's file, `SAGE_HOME/ledger.sqlite`: created whole, checked every time it is opened, migrated forward, and
read or written one connection at a time (`LedgerFile`, which `storage.ledger.Ledger` builds on).

SQLite in WAL mode (readers never wait for the writer), a versioned schema (`PRAGMA user_version`, migrated forward
when opened), and every write in one `BEGIN IMMEDIATE` transaction: a decision and what it writes are never
interleaved with another process's.

A read-only handle (what a dry run and `sage leaderboard` use) creates, migrates and writes nothing and opens no file
under the data root for writing, so it reads a ledger on a read-only data root too: the file is opened read-only and
immutable (no journal, no shared memory, no lock), or, where a writer's log (`ledger.sqlite-wal`) holds commits not
yet in the file, a copy of both in a temporary directory elsewhere; a read during which a writer changed the files (a
checkpoint) is read again.

The ledger is never taken on trust: it is created whole (built beside its path, then linked into place, so no reader
ever finds a half-made or empty one), and every open checks it first: a file that exists but is empty or no SQLite
database, or one that SQLite's `PRAGMA integrity_check` finds damaged, is a one-line LedgerError saying to restore it
or move it aside, never read as "nothing evaluated yet" or as a wrong row. Nothing is ever written over a damaged one.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

from storage.atomic import StoreError, partial_sibling
from storage.ledger_schema import DAMAGED_FIX, MIGRATIONS, SCHEMA_VERSION, SQLITE_HEADER

BUSY_TIMEOUT_S = 60.0
READ_ATTEMPTS = 3  # a read-only read that a writer's checkpoint changed under it is read again, this many times in all
T = TypeVar("T")


class LedgerError(StoreError):
    """The ledger cannot be opened or read; the message says what to do."""


class LedgerFile:
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
            if not self._log_waits():  # else SQLite's write-ahead log holds its pages
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
                out = self._read_once(fn, check)
            except LedgerError:
                if self.read_only and attempt < READ_ATTEMPTS - 1 and self._signature() != before:
                    continue
                raise
            if not self.read_only or attempt == READ_ATTEMPTS - 1 or self._signature() == before:
                return out
        raise AssertionError("unreachable")

    def _read_once(self, fn: Callable[[sqlite3.Connection], T], check: bool) -> T:
        with self._connect(check=check) as db:
            return fn(db)

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
