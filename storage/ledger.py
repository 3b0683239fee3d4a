"""The ledger: `SAGE_HOME/ledger.sqlite`, the one mutable state under SAGE_HOME (everything else is write-once): the
SAEs watch runs have seen and claimed, and the evaluations of every run (its tables: `storage.ledger_schema`; its
file, created whole, checked, migrated, read-only for dry runs and `sage leaderboard`: `storage.ledger_file`).

Every decision that writes is taken inside one `BEGIN IMMEDIATE` transaction: two watch runs at once serialise on it,
so an SAE is claimed by exactly one of them. A claim names its holder (`sage_core.watch.plan.Holder`: the host, the pid
and when that process started): a run on the same host whose holder is no longer running (killed, crashed, the machine
rebooted; a new process that reuses the pid is not it) takes its SAEs over at once; a claim whose holder is alive, runs
on another host or is not named waits until its lease runs out (the rules: `sage_core.watch.claims`; what this host
says of its processes: `storage.ledger_holders`).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import polars as pl

from sage_core.scoring.across import EVALUATION_SCHEMA  # what `sage leaderboard` reads, one definition
from sage_core.watch import claims
from sage_core.watch.plan import Decision, Holder, Outcome, SeenRow, decide
from sage_core.watch.sources import FoundSAE
from storage.home import SageHome
from storage.ledger_file import BUSY_TIMEOUT_S, READ_ATTEMPTS, LedgerError, LedgerFile
from storage.ledger_holders import gone_holders, host_identity, process_started, this_holder
from storage.ledger_schema import (
    DAMAGED_FIX,
    MIGRATIONS,
    NO_CLAIM,
    SAE_COLUMNS,
    SAE_SCHEMA,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    STATUSES,
)

__all__ = ["BUSY_TIMEOUT_S", "DAMAGED_FIX", "MIGRATIONS", "READ_ATTEMPTS", "SAE_COLUMNS", "SCHEMA_VERSION",
           "SQLITE_HEADER", "STATUSES", "Ledger", "LedgerError", "host_identity", "now_utc", "process_started",
           "this_holder"]


def now_utc() -> str:
    """ISO-8601 UTC to the microsecond: sorts as time does."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Ledger(LedgerFile):
    """The watch runs' claims and every run's evaluations, read and written one transaction at a time."""

    @classmethod
    def of(cls, home: SageHome, read_only: bool = False) -> Ledger:
        return cls(home.ledger_path(), read_only=read_only)

    # -- watch runs ----------------------------------------------------------------------------------------------
    def _seen(self, db: sqlite3.Connection, found: list[FoundSAE]) -> dict[tuple[str, str, str], SeenRow]:
        out = {}
        for f in found:
            row = db.execute("SELECT * FROM saes WHERE source=? AND release=? AND sae_id=?", f.key).fetchone()
            if row is not None:  # a ledger of an older schema, read as it is, lacks the newer columns
                cols = set(row.keys())  # (`k in row` would look among the values)
                out[f.key] = SeenRow(**{k: row[k] for k in SeenRow.model_fields if k in cols})
        return out

    def _decide(self, db: sqlite3.Connection, found: list[FoundSAE], owner: str, now: str,
                limit: int | None) -> list[Decision]:
        seen = self._seen(db, found)
        hashes = {f.content_hash for f in found if f.content_hash}
        return decide(found, seen, self._scored(db, hashes), owner, now, limit, gone_holders(seen.values(), owner))

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
        until = claims.lease_until(stamp, lease_hours)
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
                               f"{NO_CLAIM} WHERE source=? AND release=? AND sae_id=?",
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
                                 f"content_hash), {NO_CLAIM} WHERE source=? AND release=? "
                                 "AND sae_id=? AND claimed_by=? AND status='evaluating'",
                                 (o.status, o.reason, o.run, o.sae, o.content_hash, *f.key, owner))
                n += cur.rowcount
                row = claims.evaluation_of(o)
                if row is not None:
                    _append(db, row, stamp, name_source=True)
        return n

    def release(self, owner: str) -> int:
        """Give back every claim `owner` still holds (a run that stops early): they are new again for the next."""
        with self._write() as db:
            return db.execute(f"UPDATE saes SET status='new', {NO_CLAIM} "
                              "WHERE claimed_by=? AND status='evaluating'", (owner,)).rowcount

    # -- evaluations of any run -----------------------------------------------------------------------------------
    def record_run(self, run: str, model: str, rows: list[dict[str, str]], source: str = "evaluate") -> int:
        """Append one evaluation per SAE a run scored: rows of {content_hash, sae, spec, status, reason}. A run
        recorded again (a cached rerun) adds nothing. Returns how many rows were added."""
        stamp, n = now_utc(), 0
        with self._write() as db:
            for r in rows:
                n += _append(db, {"content_hash": r["content_hash"], "model": model, "run": run, "sae": r["sae"],
                                  "spec": r["spec"], "source": r.get("source", source), "status": r["status"],
                                  "reason": r.get("reason", "")}, stamp)
        return n

    def evaluations(self, model: str | None = None) -> pl.DataFrame:
        """Every evaluation recorded (of `model` only, when given), oldest first. Read-only, this is what `sage
        leaderboard` reads (`storage.boards.ledger_evaluations`)."""
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
        return pl.DataFrame([dict(r) for r in rows], schema=SAE_SCHEMA, orient="row")


_EVALUATION_COLUMNS = tuple(c for c in EVALUATION_SCHEMA if c != "evaluated_at")  # the time is the ledger's


def _append(db: sqlite3.Connection, row: dict[str, str], stamp: str, name_source: bool = False) -> int:
    """One evaluation (`row`: its columns but the time), once; `name_source`: the watch knows where the SAE came from
    better than the evaluation it ran (which recorded it first, as "evaluate"), so its source and spec replace those."""
    on_conflict = ("DO UPDATE SET source=excluded.source, spec=excluded.spec" if name_source else "DO NOTHING")
    return db.execute(f"INSERT INTO evaluations ({', '.join(_EVALUATION_COLUMNS)}, evaluated_at) VALUES "
                      f"({', '.join('?' * (len(_EVALUATION_COLUMNS) + 1))}) ON CONFLICT (content_hash, run, sae) "
                      + on_conflict, (*(row[c] for c in _EVALUATION_COLUMNS), stamp)).rowcount
