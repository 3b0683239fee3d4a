"""Flow records: what a finished flow produced (its manifests), keyed on everything that decides it.

A later run with the same key reads the record instead of walking the flow's cached tasks one by one (each a Prefect
cache lookup). A record is trusted only while every directory it names is still complete on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from storage.atomic import StoreError, is_whole, read_marker, verify_dir


def write_record(path: Path, key: str, manifest: dict[str, Any]) -> Path:
    """Atomically (write + rename) record `manifest` under `key`; a reader never sees half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")  # one per process: two writers never share it
    try:
        tmp.write_text(json.dumps({"key": key, "manifest": manifest}, indent=1, default=str))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
    return path


def read_record(path: Path, key: str, whole: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The recorded manifest if `path` holds a record for `key` and `whole(manifest)` says everything it names is
    still on disk; None otherwise (missing, unreadable, another key, something gone)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("key") != key or not isinstance(rec.get("manifest"), dict):
        return None
    return rec["manifest"] if whole(rec["manifest"]) else None


def all_complete(dirs: Iterable[str | Path]) -> bool:
    """Every directory is whole (its write-once marker is there and every file it lists is as written)."""
    return all(is_whole(Path(d)) for d in dirs)


def output_problem(path: str | Path) -> str | None:
    """None if the write-once directory `path` is whole; else one line naming what is missing or changed."""
    path = Path(path)
    if not path.exists():
        return f"{path} is missing"
    try:
        verify_dir(path)
    except StoreError as e:
        return " ".join(str(e).split(";")[0].split())
    return None


def key_problem(path: str | Path, key: str) -> str | None:
    """None if the marker of the human-named directory `path` records `key` (what its stage would write now)."""
    try:
        theirs = read_marker(Path(path)).get("key")
    except StoreError as e:
        return " ".join(str(e).split(";")[0].split())
    return None if theirs == key else f"{path} was built by other inputs or code (key {theirs}, now {key})"


def file_problem(path: str | Path, content_hash: str) -> str | None:
    """None if the file at `path` still has the content hash recorded when it was written."""
    from storage.hashing import file_hash

    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    return None if file_hash(path) == content_hash else f"{path} changed since it was written"
