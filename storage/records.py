"""Flow records: what a finished flow produced (its typed references), keyed on everything that decides it.

A later run with the same key reads the record instead of walking the flow's cached tasks one by one (each a Prefect
cache lookup). A record is trusted only while every directory it names is still complete on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from storage import refs
from storage.atomic import StoreError, is_whole, read_marker, verify_dir
from storage.hashing import dir_hash, file_hash
from storage.home import SageHome


def write_record(path: Path, key: str, value: Any) -> Path:
    """Atomically (write + rename) record `value` (typed references, `storage.refs`, or plain JSON) under `key`; a
    reader never sees half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")  # one per process: two writers never share it
    try:
        tmp.write_text(json.dumps({"key": key, "manifest": refs.dump(value)}, indent=1, default=str))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
    return path


def read_record(path: Path, key: str | None, whole: Callable[[Any], bool], kind: type | None = None) -> Any:
    """The recorded value (references revived) if `path` holds a record for `key` (None: any key), of type `kind`
    when given, and `whole(value)` says everything it names is still on disk; None otherwise (missing, unreadable,
    another key or type, something gone)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        value = refs.revive(rec["manifest"]) if isinstance(rec, dict) and "manifest" in rec else None
    except (ValueError, KeyError, TypeError):  # torn, edited, or naming a reference it does not fit
        return None
    if value is None or (key is not None and rec.get("key") != key):
        return None
    if kind is not None and not isinstance(value, kind):
        return None
    if kind is None and not isinstance(value, dict):
        return None
    return value if whole(value) else None


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
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    return None if file_hash(path) == content_hash else f"{path} changed since it was written"


# -- references --------------------------------------------------------------------------------------------------------
R = TypeVar("R", bound=refs.Ref)


def dir_ref(home: SageHome, cls: type[R], path: str | Path, **fields: Any) -> R:
    """A reference to the write-once directory at `path`: its path under SAGE_HOME and the hash of its files."""
    return cls(path=home.relative(path), hash=dir_hash(path), **fields)


def file_ref(home: SageHome, cls: type[R], path: str | Path, **fields: Any) -> R:
    """A reference to the file at `path` (a prompt table, the corpus): its path under SAGE_HOME and its hash."""
    return cls(path=home.relative(path), hash=file_hash(path), **fields)


def refs_whole(home: SageHome, items: Iterable[refs.Ref]) -> bool:
    """Every write-once directory the references name is whole."""
    return all_complete(home.at(r) for r in items)


def dir_problem(home: SageHome, ref: refs.Ref) -> str | None:
    """`output_problem` of the write-once directory `ref` names."""
    return output_problem(home.at(ref))


def parent_problem(home: SageHome, ref: refs.Ref) -> str | None:
    """`output_problem` of the write-once directory holding the file `ref` names (a prompt table, the corpus)."""
    return output_problem(home.at(ref).parent)


def keyed_dir_problem(home: SageHome, ref: refs.Ref, key: str) -> str | None:
    """A human-named write-once directory (a zoo SAE, the tokenizer): whole, and its marker holds `key`."""
    return output_problem(home.at(ref)) or key_problem(home.at(ref), key)


def same_file_problem(home: SageHome, ref: refs.Ref) -> str | None:
    """A table rewritten in place: still there with the recorded content hash."""
    return file_problem(home.at(ref), ref.hash)
