"""Content hashes: of configs (canonical JSON), of files and directories, and of the code that produced a result."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

HASH_LEN = 16


def _canonical(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return {"__type__": type(obj).__name__, **_canonical(obj.model_dump(mode="json"))}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stable_hash(*objs: Any) -> str:
    """Hash of JSON-able values and pydantic models; equal inputs give equal hashes across processes and machines."""
    payload = json.dumps([_canonical(o) for o in objs], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:HASH_LEN]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:HASH_LEN]


def dir_hash(path: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """Hash of every file's relative path and content under `path` (sorted; names in `exclude` skipped)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name not in exclude):
        h.update(str(p.relative_to(root)).encode())
        h.update(file_hash(p).encode())
    return h.hexdigest()[:HASH_LEN]


@cache
def code_version(*packages: str) -> str:
    """Hash of the source of the given packages (e.g. "sage_core"): results are recomputed when their code changes."""
    import importlib

    h = hashlib.sha256()
    for name in packages:
        mod = importlib.import_module(name)
        base = Path(mod.__file__).parent
        for p in sorted(base.rglob("*.py")):
            h.update(str(p.relative_to(base)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:HASH_LEN]
