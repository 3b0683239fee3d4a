"""The ledger's format: its tables, the migrations that bring a file of each older version forward, and what a
ledger file starts with. `storage.ledger_file` opens and checks the file, `storage.ledger` reads and writes the rows.

    saes         one row per SAE a watch source listed: who it is (source, release, sae_id), how to load it (spec),
                 its model, hook and weights' content hash where known, first and last seen, its status
                 (new | evaluating | evaluated | failed | skipped) with the reason, the run that scored it and its
                 name in that run, and, while a watch run evaluates it, which run claimed it until when and which
                 process holds that claim (host, pid, the process's start)
    evaluations  append-only: one row per SAE a run scored (every `sage evaluate` and every watch run), by content hash
"""

from __future__ import annotations

import polars as pl

SCHEMA_VERSION = 2
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
SAE_SCHEMA = {c: pl.Int64 if c == "claim_pid" else pl.String for c in SAE_COLUMNS}  # `Ledger.saes`' frame
NO_CLAIM = "claimed_by=NULL, claimed_until=NULL, claim_host=NULL, claim_pid=NULL, claim_started=NULL"

SQLITE_HEADER = b"SQLite format 3\x00"
# what to do with a damaged ledger: it is the history of every evaluation, so it is never rebuilt over
DAMAGED_FIX = ("restore it from a backup, or move it aside to start a new history (the next watch run then lists every "
               "SAE as new again)")
