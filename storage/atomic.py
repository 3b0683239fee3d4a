"""Write-once directories: built in a temporary sibling, marked complete last, then renamed into place.

A reader only ever sees a directory that is absent or whole: a crash leaves at most a `*.partial-<host>-<pid>-<tag>`
sibling, which a later writer on the same host removes once that process is gone (never a live writer's).

The marker (`_COMPLETE.json`) records the size and xxh3-128 digest of every file written, and the directory's `kind`.
`verify_dir` / `verify_file` check them, so a truncated, edited or deleted file is named in one line rather than read;
a marker without that file list (written before SAGE recorded it) counts as not whole, so its stage rebuilds it.
Digests are remembered per (path, inode, size, mtime, ctime) within a process: a task that reads the same file many
times hashes it once, and any rewrite of the file changes the key.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import xxhash

MARKER = "_COMPLETE.json"
DIGEST = "xxh3_128"  # guards against truncation and accidental change, not forgery; ~9 GB/s here
# markers of complete directories (ours and the zoo model's): a directory holding one is never replaced wholesale
_NESTED_MARKERS = (MARKER, "_MODEL_COMPLETE.json")
_BLOCK = 1 << 22


class StoreError(RuntimeError):
    """A store is missing, incomplete or not what was asked for; the message says what to do."""


# -- digests ---------------------------------------------------------------------------------------------------------
_digests: dict[tuple, str] = {}
_markers: dict[tuple, dict[str, Any] | None] = {}


def _key(path: Path, st: os.stat_result) -> tuple:
    return str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_digest(path: str | Path, st: os.stat_result | None = None) -> str:
    """xxh3-128 hex digest of a file, remembered for as long as its stat signature is unchanged."""
    path = Path(path)
    st = st or path.stat()
    k = _key(path, st)
    if k not in _digests:
        h = xxhash.xxh3_128()
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
        _digests[k] = h.hexdigest()
    return _digests[k]


def remember_digest(path: str | Path, st: os.stat_result, digest: str) -> None:
    """`file_digest` of a file its writer hashed in memory (`digest`, xxh3-128 of the bytes it wrote): later checks
    in this process take it from here instead of reading the file back, while its stat signature is `st`'s."""
    _digests[_key(Path(path), st)] = digest


def json_digest(value: Any) -> str:
    """xxh3-128 hex digest of a JSON value's canonical form (sorted keys, no whitespace): what a JSON record (a flow
    record, `storage.records`) was when written, whatever its indentation on disk."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return xxhash.xxh3_128(text.encode()).hexdigest()


def _load_marker(path: Path) -> dict[str, Any] | None:
    """The marker of directory `path` as a dict, None if absent or unreadable (remembered per stat signature)."""
    p = Path(path) / MARKER
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    k = _key(p, st)
    if k not in _markers:
        try:
            m = json.loads(p.read_bytes())
        except (OSError, ValueError):
            m = None
        _markers[k] = m if isinstance(m, dict) else None
    return _markers[k]


def cached_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of directory `path` (None if absent or unreadable); parsed once per version of the file. Treat it
    as read-only."""
    return _load_marker(Path(path))


def _rerun(path: Path) -> str:
    return f"rerun the command: the stage that writes {path} rebuilds it"


# -- reading ---------------------------------------------------------------------------------------------------------
def read_marker(path: Path) -> dict[str, Any]:
    m = _load_marker(Path(path))
    if m is None:
        raise StoreError(f"{path} is incomplete or missing (no readable {MARKER}); {_rerun(Path(path))}")
    return dict(m)


def _files(path: Path) -> dict[str, dict[str, Any]]:
    m = read_marker(path)
    files = m.get("files")
    if not isinstance(files, dict):
        raise StoreError(f"{path} was written before SAGE recorded checksums of its files; {_rerun(Path(path))}")
    return files


def _check(root: Path, rel: str, want: dict[str, Any]) -> None:
    p = root / rel
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(f"{p} is missing (its directory's {MARKER} lists it); {_rerun(root)}") from None
    if st.st_size != want.get("size"):
        raise StoreError(f"{p} has {st.st_size} bytes, not the {want.get('size')} written (truncated or changed); "
                         f"{_rerun(root)}")
    if file_digest(p, st) != want.get("digest"):
        raise StoreError(f"{p} changed since it was written (checksum mismatch); {_rerun(root)}")


def verify_dir(path: str | Path) -> None:
    """Raise StoreError (one line naming the first bad file) unless `path` is complete and every file its marker lists
    has the size and digest recorded when it was written. No side effects; a file already checked in this process
    and unchanged since (same stat signature) costs one `stat`."""
    path = Path(path)
    for rel, want in _files(path).items():
        _check(path, rel, want)


def verify_file(path: str | Path, root: str | Path | None = None) -> Path:
    """Check one file of a write-once directory (`root`, default the nearest enclosing directory with a marker)
    against the marker: size, then digest. Returns the path; raises StoreError in one line naming the file."""
    path = Path(path)
    root = Path(root) if root is not None else _root_of(path)
    rel = path.relative_to(root).as_posix()
    files = _files(root)
    if rel not in files:
        raise StoreError(f"{path} is not among the files recorded in {root / MARKER}; {_rerun(root)}")
    _check(root, rel, files[rel])
    return path


def _root_of(path: Path, levels: int = 4) -> Path:
    """The nearest directory above `path` holding a marker (its parent when there is none)."""
    for d in list(path.parents)[:levels]:
        if (d / MARKER).is_file():
            return d
    return path.parent


def is_whole(path: str | Path) -> bool:
    """`path` is complete and verify_dir passes."""
    try:
        verify_dir(path)
    except StoreError:
        return False
    return True


def is_complete(path: str | Path) -> bool:
    """Complete means whole: the marker lists every file and each is unchanged (see `is_whole`), so a writer that
    finds a damaged directory rebuilds it instead of keeping it."""
    return is_whole(path)


# -- writing ---------------------------------------------------------------------------------------------------------
_HOST = "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname()) or "host"


def _owner() -> str:
    """`<host>-<pid>-<tag>`: whose temporary directory this is (the tag tells apart two writes of one process)."""
    return f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    """`pid` runs (another user's too); a zombie has exited: its writes are over."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # another user's process we may not look at: it runs
        return True


def _abandoned(p: Path, tag: str) -> bool:
    """A `<name>.<tag>-<owner>` sibling whose writer is a dead process on this host (legacy names: `<tag>-<pid>`)."""
    suffix = p.name.rsplit(f".{tag}-", 1)[-1]
    parts = suffix.rsplit("-", 2)
    if len(parts) == 3:
        host, pid, _ = parts
    elif len(parts) == 1:
        host, pid = _HOST, parts[0]
    else:
        return False
    return host == _HOST and pid.isdigit() and not _pid_alive(int(pid))


def _remove_abandoned(final: Path) -> None:
    for tag in ("partial", "stale"):
        for p in final.parent.glob(f"{final.name}.{tag}-*"):
            if _abandoned(p, tag):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:  # a single file built beside its place (the ledger)
                    p.unlink(missing_ok=True)


def partial_sibling(final: Path) -> Path:
    """Where this process builds `final` before moving it into place: `<name>.partial-<host>-<pid>-<tag>` beside it;
    one left by a process that died on this host is removed first (never a live writer's)."""
    final = Path(final)
    _remove_abandoned(final)
    return final.parent / f"{final.name}.partial-{_owner()}"


def _record_files(tmp: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file() and p.relative_to(tmp).as_posix() != MARKER:
            st = p.stat()
            out[p.relative_to(tmp).as_posix()] = {"size": st.st_size, "digest": file_digest(p, st)}
    return out


def _holds_complete_dirs(path: Path) -> bool:
    return any(any(n in _NESTED_MARKERS for n in names) for _, _, names in os.walk(path))


def _check_replaceable(final: Path, kind: str | None) -> None:
    """Refuse to replace anything but a directory of the same kind (or one of ours left incomplete)."""
    if not final.is_dir() or final.is_symlink():
        raise StoreError(f"{final} exists and is not a directory SAGE wrote; refusing to replace it (move it away)")
    m = _load_marker(final)
    if m is not None:
        theirs = m.get("kind")
        legacy = not isinstance(m.get("files"), dict)
        if theirs != kind and not (legacy and theirs is None):
            raise StoreError(f"{final} holds a complete {theirs!r} directory, not {kind!r}; refusing to replace it "
                             f"(choose another name or path)")
        return
    for child in final.iterdir():
        if child.is_dir() and _holds_complete_dirs(child):
            raise StoreError(f"{final} is not a directory SAGE wrote here but holds complete results; refusing to "
                             f"replace it (choose another name or path)")


def _install(tmp: Path, final: Path, replace: bool, kind: str | None) -> None:
    for _ in range(5):
        if final.exists() or final.is_symlink():
            _check_replaceable(final, kind)
            if not replace and is_whole(final):
                shutil.rmtree(tmp, ignore_errors=True)  # already written (by us earlier or by another process)
                return
            # swap: a crash between the two renames leaves no `final` (rebuilt next time), never a mix of old and new
            old = final.parent / f"{final.name}.stale-{_owner()}"
            try:
                os.replace(final, old)
            except FileNotFoundError:  # another writer moved it away first: try again
                continue
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # nothing already written is lost
                raise
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.replace(tmp, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # another process installed `final` between our check and our rename: look again
    raise StoreError(f"{final} kept changing under concurrent writers; rerun the command")


@contextmanager
def write_once(final: Path, meta: dict[str, Any] | None = None, replace: bool = False,
               kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success record every file's size and digest in the marker and move the
    directory to `final` atomically.

    If `final` is already whole it is left untouched (the caller should have checked) unless `replace` (the caller
    found it stale): then it is swapped out only once the new one is whole. A damaged or incomplete `final` of the same
    `kind` (default: `meta["kind"]`) is replaced; a directory of another kind, or one that is not ours and holds
    complete results, never is. A failed write (a full disk, an exception in the body) leaves no temporary files.
    """
    final = Path(final)
    meta = dict(meta or {})
    kind = kind if kind is not None else meta.get("kind")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(final)
        tmp = final.parent / f"{final.name}.partial-{_owner()}"
        tmp.mkdir()
    except OSError as exc:
        raise StoreError(f"could not write {final}: {exc.strerror or exc}; fix the disk (space, permissions) and "
                         f"rerun") from exc
    try:
        yield tmp
        marker = {"written_at": time.time(), **meta, "kind": kind, "digest_algorithm": DIGEST,
                  "files": _record_files(tmp)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, default=str))
        _install(tmp, final, replace, kind)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"could not write {final}: {exc.strerror or exc}; fix the disk (space, permissions) and "
                         f"rerun: results already written are kept") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
