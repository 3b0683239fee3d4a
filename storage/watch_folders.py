"""A watched folder of SAEs (`dir:` sources), listed without loading weights: a local folder or an fsspec URL of SAE
directories in SAELens' layout. A local SAE's spec is its directory; a remote one is first copied into a write-once,
content-addressed snapshot (SAGE_HOME/watched/<content hash>) and that is its spec.

A folder entry that cannot be read does not stop the listing: whatever the cause (cfg.json not JSON, not valid UTF-8,
not an object, nested deeper than a parser goes, too big, naming no model; a name with control characters; a symlink
loop, a broken symlink or one leading out of the folder; a file or directory it may not read), it comes back in
`Listing.unreadable` with a one-line reason (`_why`) and the other entries are listed. Only the folder itself
(missing, not listable) or a full or unwritable SAGE_HOME (a remote folder's snapshots) stop a listing.
`storage.watch_sources` registers this as the `dir:` lister.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sage_core.watch.sources import FolderSource, FoundSAE, Listing
from storage.atomic import StoreError, is_complete, read_marker, write_once
from storage.hashing import HASH_LEN, stable_hash
from storage.home import SageHome
from storage.sae_hub import MAX_CFG_BYTES, SAE_CFG, SAE_WEIGHTS, cfg_field, cfg_hook, read_cfg, sae_files_hash
from storage.sae_names import SourceError

# what tells one version of a remote file from another, by backend (first present wins)
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "md5", "crc32c", "generation", "LastModified", "last_modified", "mtime",
                 "updated", "created")


class _NotAnSAE(Exception):
    """A directory holding neither of an SAE's files: not listed, not reported."""


class _Unreadable(Exception):
    """An entry that looks like an SAE but cannot be listed; the message is the reason."""


# -- paths under SAGE_HOME ------------------------------------------------------------------------------------------
def watched_root(home: SageHome) -> Path:
    return home.watched_root()


def watched_snapshot(home: SageHome, content_hash: str) -> Path:
    """The write-once copy of a remote folder's SAE whose files hash to `content_hash` (`sae_files_hash`)."""
    if not re.fullmatch(rf"[0-9a-f]{{{HASH_LEN}}}", content_hash):
        raise ValueError(f"{content_hash!r} is not a content hash ({HASH_LEN} hex digits)")
    return watched_root(home) / content_hash


def _watched_pointer(home: SageHome, key: str) -> Path:
    """A write-once note: the remote SAE files of this (URL, sizes, versions) are snapshot <hash> (no new copy)."""
    return watched_root(home) / "seen" / key


def url_fs(url: str, what: str):
    """(filesystem, path) of a local path or fsspec URL; a one-line SourceError when it cannot be opened."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except ImportError as e:  # the protocol's backend is not installed
        raise SourceError(f"cannot open {what} {url}: {e}; install that backend or fix the URL") from e
    except ValueError as e:
        raise SourceError(f"cannot open {what} {url}: {e}; use a path or an fsspec URL (file://, s3://, ...)") from e


# -- a watched folder -----------------------------------------------------------------------------------------------
def _hostile(name: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "its name holds control characters; rename it"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8; rename it"
    if name != name.strip():
        return "its name begins or ends with whitespace (an SAE spec strips it: another directory would load); rename it"
    return None


def _skipped_name(name: str) -> bool:
    """Hidden entries and write-once temporaries (`<name>.partial-<owner>`): never SAEs of their own."""
    return name.startswith(".") or ".partial-" in name or ".stale-" in name


def _sae_fields(cfg_bytes: bytes) -> tuple[str, str]:
    """(model, hook) of a cfg.json; _Unreadable with the reason otherwise."""
    try:
        cfg = read_cfg(cfg_bytes)
    except ValueError as e:  # not JSON, not UTF-8, nested too deep, not an object, too big (`read_cfg`'s one line)
        raise _Unreadable(str(e)) from e
    model, hook = cfg_field(cfg, "model_name"), cfg_hook(cfg)
    if not model:
        raise _Unreadable("cfg.json names no model (metadata.model_name); add it")
    if _hostile(model) or _hostile(hook):
        raise _Unreadable("cfg.json's model or hook name holds control characters")
    return model, hook


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _why(e: BaseException) -> str:
    """Why a folder entry could not be read, in one line, whatever raised (the one path every reason takes)."""
    if isinstance(e, _Unreadable):
        return str(e)
    if isinstance(e, RecursionError):
        return "nested too deeply to be read (RecursionError); not an SAE"
    if isinstance(e, OSError):
        if e.errno == errno.ELOOP:
            return "a symlink loop; not followed"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied ({_one_line(e.filename or '')}); let SAGE read it or move it out"
        return f"could not be read ({_one_line(e.strerror or e)})"
    if isinstance(e, MemoryError):
        return "too large to read"
    return f"could not be read ({type(e).__name__}: {_one_line(e)})"


def _link_problem(p: Path, real_root: Path) -> str | None:
    """Why the symlink `p` is not followed: a loop, a target that is missing, or one outside the watched folder."""
    try:
        target = Path(os.path.realpath(p, strict=True))
    except RuntimeError:  # Python < 3.13 says a loop this way
        return "a symlink loop; not followed"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop; not followed"
        if e.errno == errno.ENOENT:
            return "a broken symlink (what it names is missing); not followed"
        raise
    if not target.is_relative_to(real_root):
        return _OUTSIDE
    return None


_OUTSIDE = "a symlink leading outside the watched folder; not followed"


def _local_sae(label: str, d: Path, real_root: Path) -> FoundSAE:
    files = [d / SAE_CFG, d / SAE_WEIGHTS]
    there = [f.is_symlink() or f.exists() for f in files]  # exists() raises where `d` may not be searched
    if not any(there):
        raise _NotAnSAE
    if not all(there):
        raise _Unreadable(f"missing {files[there.index(False)].name}; an SAE directory holds {SAE_CFG} and "
                          f"{SAE_WEIGHTS}")
    for f in files:
        why = _link_problem(f, real_root) if f.is_symlink() else None
        if why:
            raise _Unreadable(f"{f.name} is {why}")
        if not f.is_file():
            raise _Unreadable(f"{f.name} is not a file")
    size = files[0].stat().st_size
    if size > MAX_CFG_BYTES:
        raise _Unreadable(f"cfg.json is {size} bytes, not an SAE config (a few KB)")
    with open(files[0], "rb") as fh:
        cfg_bytes = fh.read(MAX_CFG_BYTES + 1)  # never more, should it have grown since
    model, hook = _sae_fields(cfg_bytes)
    return FoundSAE(source=label, sae_id=str(d), spec=str(d), model=model, hook=hook, content_hash=sae_files_hash(d))


def _local_entry(root: Path, real: Path, entry: os.DirEntry) -> Path | None:
    """The directory an entry of the watched folder names, to look at as an SAE; None for an entry that is no SAE
    directory (a file, a hidden name); _Unreadable for one that cannot be told."""
    why = _hostile(entry.name)
    if why:
        raise _Unreadable(why)
    if _skipped_name(entry.name):
        return None
    p = root / entry.name
    if entry.is_symlink():
        why = _link_problem(p, real)
        if why and (why != _OUTSIDE or p.is_dir()):  # a link to a file elsewhere is no SAE directory: not reported
            raise _Unreadable(why)
        if why:
            return None
    return p if entry.is_dir() else None  # follows a link that stays inside: listed like the directory it names


def _entry_label(root: Path, name: str) -> str:
    return str(root / name) if _hostile(name) is None else f"{root}/{ascii(name)}"


def _list_local(label: str, root: Path) -> Listing:
    try:
        if not root.exists():
            raise SourceError(f"watched folder {root} does not exist; create it (mkdir -p {root}) or fix the path "
                              "after dir:")
        if not root.is_dir():
            raise SourceError(f"watched folder {root} is a file; pass the folder that holds the SAE directories")
        # absolute: an SAE's key and spec are the same from the CLI's directory and a worker's, and a spec never
        # reads as another form (a folder named `zoo:x` or `py:m:f` under a relative root)
        root = Path(os.path.abspath(root))
        real = root.resolve()
        is_sae = any(f.is_symlink() or f.exists() for f in (root / SAE_CFG, root / SAE_WEIGHTS))
        entries = [] if is_sae else sorted(os.scandir(root), key=lambda e: e.name)
    except (OSError, RuntimeError) as e:
        raise SourceError(f"watched folder {root} could not be listed ({_why(e)}); fix its permissions") from e
    dirs: list[Path] = [root] if is_sae else []  # the folder is itself an SAE directory
    unreadable = []
    for entry in entries:
        try:
            d = _local_entry(root, real, entry)
        except Exception as e:  # noqa: BLE001 - whatever makes one entry unreadable is reported, the rest go on
            unreadable.append((_entry_label(root, entry.name), _why(e)))
            continue
        if d is not None:
            dirs.append(d)
    found = []
    for d in dirs:
        try:
            found.append(_local_sae(label, d, real))
        except _NotAnSAE:
            continue
        except Exception as e:  # noqa: BLE001 - as above: reported in one line
            unreadable.append((str(d), _why(e)))
    return Listing(found=found, unreadable=unreadable)


def _version(info: dict[str, Any]) -> str | None:
    for k in _VERSION_KEYS:
        if info.get(k) not in (None, ""):
            return f"{k}={info[k]}"
    return None


def _snapshot(fs, d: str, cfg_bytes: bytes, infos: list[dict[str, Any]], home: SageHome,
              write: bool = True) -> tuple[Path, str]:
    """The write-once local copy of a remote SAE directory, named by its content hash, and that hash. Where the
    backend reports a version of both files (an ETag, an mtime, ...), a note keyed by URL, sizes and versions saves
    the next listing the download; without one every listing copies the files again to learn their hash.
    `write=False`: nothing is written under SAGE_HOME (the files are hashed in a temporary copy outside it; the path
    is where a real run puts them)."""
    url = fs.unstrip_protocol(d)
    versions = [_version(i) for i in infos]
    pointer = None
    if all(versions):
        pointer = _watched_pointer(home, stable_hash(url, [(i.get("size"), v)
                                                           for i, v in zip(infos, versions, strict=True)]))
        if is_complete(pointer):
            try:
                snap = watched_snapshot(home, str(read_marker(pointer).get("snapshot", "")))
            except (ValueError, StoreError):  # a note that names no snapshot: copy again
                snap = None
            if snap is not None and is_complete(snap):
                return snap, sae_files_hash(snap)
    if not write:
        with tempfile.TemporaryDirectory(prefix="sage-dry-run-") as tmp:
            t = Path(tmp)
            (t / SAE_CFG).write_bytes(cfg_bytes)
            fs.get_file(f"{d}/{SAE_WEIGHTS}", str(t / SAE_WEIGHTS))
            h = sae_files_hash(t)
        return watched_snapshot(home, h), h
    watched_root(home).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".incoming-", dir=watched_root(home)) as tmp:
        t = Path(tmp)
        (t / SAE_CFG).write_bytes(cfg_bytes)
        fs.get_file(f"{d}/{SAE_WEIGHTS}", str(t / SAE_WEIGHTS))
        snap = watched_snapshot(home, sae_files_hash(t))
        if not is_complete(snap):
            with write_once(snap, {"kind": "watched-sae", "url": url}) as out:
                for f in (SAE_CFG, SAE_WEIGHTS):
                    os.replace(t / f, out / f)
    if pointer is not None and not is_complete(pointer):
        with write_once(pointer, {"kind": "watched-pointer", "url": url, "snapshot": snap.name}):
            pass  # the marker is the note
    return snap, sae_files_hash(snap)


def _remote_sae(label: str, fs, d: str, home: SageHome, write: bool = True) -> FoundSAE:
    infos = []
    for name in (SAE_CFG, SAE_WEIGHTS):
        try:
            infos.append(fs.info(f"{d}/{name}"))
        except FileNotFoundError:
            infos.append(None)
    if not any(infos):
        raise _NotAnSAE
    if not all(infos):
        raise _Unreadable(f"missing {SAE_CFG if infos[0] is None else SAE_WEIGHTS}; an SAE directory holds "
                          f"{SAE_CFG} and {SAE_WEIGHTS}")
    if any(i.get("type") != "file" for i in infos):
        raise _Unreadable(f"{SAE_CFG} or {SAE_WEIGHTS} is not a file")
    if (infos[0].get("size") or 0) > MAX_CFG_BYTES:
        raise _Unreadable(f"cfg.json is {infos[0]['size']} bytes, not an SAE config (a few KB)")
    cfg_bytes = fs.cat_file(f"{d}/{SAE_CFG}")
    model, hook = _sae_fields(cfg_bytes)
    snap, content_hash = _snapshot(fs, d, cfg_bytes, infos, home, write)
    return FoundSAE(source=label, sae_id=fs.unstrip_protocol(d), spec=str(snap), model=model, hook=hook,
                    content_hash=content_hash)


def _list_folder(src: FolderSource, home: SageHome, write: bool = True) -> Listing:
    from fsspec.implementations.local import LocalFileSystem

    fs, root = url_fs(src.url, "watched folder")
    if isinstance(fs, LocalFileSystem):
        return _list_local(src.label, Path(root))
    root = root.rstrip("/") or "/"
    try:
        if not fs.isdir(root):
            raise SourceError(f"watched folder {src.url} does not exist (or is not a folder); create it or fix the "
                              "URL after dir:")
        entries = fs.ls(root, detail=True)
    except (OSError, ValueError) as e:
        raise SourceError(f"watched folder {src.url} could not be listed ({type(e).__name__}: {e})") from e
    dirs, unreadable = [], []
    names = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries}
    if SAE_CFG in names or SAE_WEIGHTS in names:
        dirs = [root]
    else:
        for e in sorted(entries, key=lambda e: e["name"]):
            path = e["name"].rstrip("/")
            name = path.rsplit("/", 1)[-1]
            why = _hostile(name)
            if why:
                unreadable.append((f"{fs.unstrip_protocol(root)}/{ascii(name)}", why))
            elif e.get("type") == "directory" and not _skipped_name(name):
                dirs.append(path)
    found = []
    for d in dirs:
        try:
            found.append(_remote_sae(src.label, fs, d, home, write))
        except _NotAnSAE:
            continue
        except StoreError:  # a full or unwritable SAGE_HOME stops the listing
            raise
        except Exception as e:  # noqa: BLE001 - backends raise their own errors (botocore, aiohttp, ...): one line
            unreadable.append((fs.unstrip_protocol(d), _why(e)))
    return Listing(found=found, unreadable=unreadable)
