"""Content hashes: of configs (canonical JSON), of files and directories, and of the code that produced a result."""

from __future__ import annotations

import ast
import hashlib
import json
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


def dir_hash(path: str | Path, exclude: tuple[str, ...] = ("_COMPLETE.json",)) -> str:
    """Hash of every file's relative path and content under `path` (sorted; names in `exclude` skipped). The
    write-once marker is not content (it holds the time of writing): a rewrite of the same files keeps the hash."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name not in exclude):
        h.update(str(p.relative_to(root)).encode())
        h.update(file_hash(p).encode())
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
    out: set[str] = set()
    with _PARSE_LOCK:  # CPython 3.11's parser is not thread-safe (python/cpython#106905): task threads key at once
        tree = ast.parse(module_source(name), filename=str(path))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {n for n in names if module_file(n) is not None and n not in NO_OUTPUT_EFFECT}
    return out - {name}


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
