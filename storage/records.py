"""Flow records: what a finished flow produced (its typed references), keyed on everything that decides it.

A later run with the same key reads the record instead of walking the flow's cached tasks one by one (each a Prefect
cache lookup). A record is trusted only while its own checksum matches (it holds the digest of what it records) and
every directory it names is still complete on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from storage import refs
from storage.atomic import DIGEST, StoreError, is_whole, json_digest, read_marker, verify_dir
from storage.hashing import dir_hash, file_hash
from storage.home import SageHome
from storage.integrity import read_record_json


def write_record(path: Path, key: str, value: Any) -> Path:
    """Atomically (write + rename) record `value` (typed references, `storage.refs`, or plain JSON) under `key`, with
    the digest of what it records (`storage.atomic.json_digest`): a reader never sees half a record, and one whose
    content changed after it was written (an edited number, a part's hash) is never taken for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the digest of what a reader parses back (tuples as lists, other values as their str), not of `value` itself
    payload = json.loads(json.dumps({"key": key, "manifest": refs.dump(value)}, default=str))
    rec = {**payload, "digest_algorithm": DIGEST, "digest": json_digest(payload)}
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")  # one per process: two writers never share it
    try:
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
    return path


def read_record(path: Path, key: str | None, whole: Callable[[Any], bool], kind: type | None = None) -> Any:
    """The recorded value (references revived) if `path` holds a record for `key` (None: any key) whose checksum
    matches, of type `kind` when given, and `whole(value)` says everything it names is still on disk; None otherwise
    (missing, unreadable, edited, without a checksum, another key or type, something gone: its stage rewrites it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rec = read_record_json(path)
        value = refs.revive(rec["manifest"])
    except (StoreError, ValueError, KeyError, TypeError):  # torn, edited, or naming a reference it does not fit
        return None
    if value is None or (key is not None and rec.get("key") != key):
        return None
    if kind is not None and not isinstance(value, kind):
        return None
    if kind is None and not isinstance(value, dict):
        return None
    return value if whole(value) else None


def checked_record(path: Path, kind: type, fix: str) -> Any:
    """The value recorded at `path` (references revived) for a command that shows it: None when there is no record,
    else the value once its checksum matches and it is a `kind`; a record that does not verify is a StoreError in one
    line naming it and what is wrong, then `fix` (what to do), never shown as it is."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    rec = read_record_json(path, fix)
    try:
        value = refs.revive(rec["manifest"])
    except (ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreError(f"{path} names a reference it does not fit ({first}); {fix}") from exc
    if not isinstance(value, kind):
        raise StoreError(f"{path} records a {type(value).__name__}, not a {kind.__name__}; {fix}")
    return value


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
