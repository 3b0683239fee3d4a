"""Flow records: what a finished flow produced (its manifests), keyed on everything that decides it.

A later run with the same key reads the record instead of walking the flow's cached tasks one by one (each a Prefect
cache lookup). A record is trusted only while every directory it names is still complete on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from storage.atomic import is_complete


def write_record(path: Path, key: str, manifest: dict[str, Any]) -> Path:
    """Atomically (write + rename) record `manifest` under `key`; a reader never sees half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"key": key, "manifest": manifest}, indent=1, default=str))
    tmp.replace(path)
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
    """Every directory is complete (its write-once marker is there)."""
    return all(is_complete(Path(d)) for d in dirs)
