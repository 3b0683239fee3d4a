"""Content hashes: of configs (canonical JSON), of files and directories, and of the code that produced a result.

A file's content hash is of its canonical content where its format has one, not of its bytes: a JSON file as JSON
with sorted keys and no whitespace, a safetensors file with its header's metadata sorted by key and its tensor
entries in data order (dtype, shape and offsets), its data as written. The same SAE or dictionary written again with
its keys in another order (safetensors writes its metadata in a random order per process) keeps its hash; a file
safetensors wrote without metadata hashes as its bytes, so the hub's sha256 of an SAE's weights is their hash too.
"""

from __future__ import annotations

import ast
import hashlib
import json
import struct
import threading
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


MAX_JSON_BYTES = 64 << 20  # a bigger .json file is hashed as its bytes, not parsed
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit on a header


def json_content_hash(data: bytes) -> str:
    """Hash of a JSON document's content: the value with its objects' keys sorted, without whitespace. Bytes that
    are not JSON (or nest deeper than the parser goes) hash as themselves."""
    try:
        text = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=True)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return hashlib.sha256(data).hexdigest()[:HASH_LEN]
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


_ENTRY = ("dtype", "shape", "data_offsets")


def _canonical_header(raw: bytes) -> bytes | None:
    """A safetensors header in canonical form: `__metadata__` first with its keys sorted, then each tensor's entry
    (dtype, shape, data_offsets) in data order, compact, padded with spaces to 8 bytes, as safetensors writes it; None
    for a header that is not one."""
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        return None
    entries = []
    for name, info in header.items():
        if not (isinstance(info, dict) and set(info) == set(_ENTRY) and isinstance(info["data_offsets"], list)
                and len(info["data_offsets"]) == 2 and all(isinstance(o, int) for o in info["data_offsets"])):
            return None
        entries.append((info["data_offsets"][0], info["data_offsets"][1], name, {k: info[k] for k in _ENTRY}))
    out: dict[str, Any] = {} if meta is None else {"__metadata__": dict(sorted(meta.items()))}
    out.update((name, info) for *_, name, info in sorted(entries, key=lambda e: e[:3]))
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)


def safetensors_content_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a safetensors file with its header in canonical form (`_canonical_header`), its data as written: a
    file whose header is already canonical (safetensors wrote it, without metadata) hashes as its bytes. A file that
    is not safetensors hashes as its bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
            return file_hash(path)
        canonical = _canonical_header(f.read(n))
        if canonical is None:
            return file_hash(path)
        h = hashlib.sha256(struct.pack("<Q", len(canonical)) + canonical)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:HASH_LEN]


def content_file_hash(path: str | Path) -> str:
    """A file's content hash: of its canonical content for JSON and safetensors files (by suffix), else of its
    bytes (`file_hash`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return safetensors_content_hash(path)
    if suffix == ".json" and path.stat().st_size <= MAX_JSON_BYTES:
        return json_content_hash(path.read_bytes())
    return file_hash(path)


def dir_hash(path: str | Path, exclude: tuple[str, ...] = ("_COMPLETE.json",)) -> str:
    """Hash of every file's relative path and content (`content_file_hash`) under `path` (sorted; names in `exclude`
    skipped). The write-once marker is not content (it holds the time of writing): a rewrite of the same files keeps
    the hash, and so does one that writes a config's keys or a safetensors file's metadata in another order."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name not in exclude):
        h.update(str(p.relative_to(root)).encode())
        h.update(content_file_hash(p).encode())
    return h.hexdigest()[:HASH_LEN]


PROJECT_PACKAGES = ("sage_core", "storage", "tasks", "flows", "report")
# modules a stage imports that cannot change what it writes: progress reporting only counts and tells. Left out of
# the code versions, so a change to how progress is shown recomputes nothing.
NO_OUTPUT_EFFECT = frozenset({"tasks.progress"})
ROOT = Path(__file__).resolve().parent.parent


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (e.g. "sage_core.scoring.score"), or None if it is not one."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def module_source(name: str) -> bytes:
    """The bytes a module's code version is made of (a seam: tests change a module's version through it)."""
    path = module_file(name)
    return path.read_bytes() if path else b""


_PARSE_LOCK = threading.Lock()


def project_imports(name: str) -> set[str]:
    """Project modules that module `name` imports (anywhere in its body, lazy imports included, type-checking-only
    imports not), by its syntax tree: `from pkg import sub` counts `pkg.sub` when that is a module."""
    path = module_file(name)
    if path is None:
        return set()
    return set(_imports_in(name, module_source(name), str(path)))


@cache
def _imports_in(name: str, source: bytes, filename: str) -> frozenset[str]:
    """`project_imports` of one source text: each module is parsed once per process, not once per stage whose
    closure holds it (~2 s of CPU per process for the stages' code versions, before)."""
    out: set[str] = set()
    with _PARSE_LOCK:  # CPython 3.11's parser is not thread-safe (python/cpython#106905): task threads key at once
        tree = ast.parse(source, filename=filename)
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {n for n in names if module_file(n) is not None and n not in NO_OUTPUT_EFFECT}
    return frozenset(out - {name})


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports there are for annotations and run no code)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


@cache
def module_closure(*roots: str) -> tuple[str, ...]:
    """`roots` and every project module they import, transitively (sorted)."""
    seen: set[str] = set()
    todo = [r for r in roots if module_file(r) is not None]
    missing = [r for r in roots if module_file(r) is None]
    if missing:
        raise ValueError(f"{missing} are not modules of this project ({', '.join(PROJECT_PACKAGES)})")
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(project_imports(m) - seen)
    return tuple(sorted(seen))


@cache
def stage_code_version(*roots: str) -> str:
    """Hash of the code a stage runs: the modules `roots` (e.g. "tasks.score") and every project module they import,
    transitively. Editing a module no stage imports (the report's plots, say) changes no stage's version; editing
    `sage_core.scoring.score` changes the scoring stages' versions and not the zoo's."""
    h = hashlib.sha256()
    for m in module_closure(*roots):
        h.update(m.encode() + b"\0")
        h.update(hashlib.sha256(module_source(m)).digest())
    return h.hexdigest()[:HASH_LEN]


def source_version(*names: str) -> str:
    """Hash of the source of the modules `names` alone, not of what they import: a flow's wiring, whose tasks' code
    is versioned by their own stages (a flow imports the evaluation settings for its parameters' types, and those
    must not move a zoo or ground-truth record)."""
    h = hashlib.sha256()
    for name in names:
        if module_file(name) is None:
            raise ValueError(f"{name} is not a module of this project ({', '.join(PROJECT_PACKAGES)})")
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(module_source(name)).digest())
    return h.hexdigest()[:HASH_LEN]
