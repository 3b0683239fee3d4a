"""What every SAGE Prefect task shares: the one key of each output, the cache policy built on it, the retry rule and
the result store (JSON records under SAGE_HOME/.prefect-results, never pickles).

`output_key` is the only place a key is made: from the inputs' content (typed references without their paths, configs), the
stage's name and the code version of the modules that stage runs. The task body uses it as its output's directory
name (or, for the zoo's human-named directories, records it in the marker and compares it on reuse), Prefect uses it
as the cache key (`StageCache`), and the flow records use it too.
"""

from __future__ import annotations

import errno
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer
from pydantic import BaseModel

from storage import records, refs
from storage.atomic import StoreError
from storage.hashing import stable_hash, stage_code_version
from storage.home import SageHome

# The only inputs left out of keys (tests/unit/tasks/test_cache_keys.py holds every cached task to this list): the
# data root (`home`: a moved root keeps its keys), the device a stage runs on (every device gives the same result
# within float tolerance: a GPU run reuses a CPU run's outputs), and the fields of a reference that say where an
# output lies, not what it is (its content hash says that)
UNKEYED_PARAMS = frozenset({"home", "device"})
UNKEYED_FIELDS = frozenset({"path", "prompts_path", "device"})
SERIALIZER = "sage-json"


def identity(value: Any) -> Any:
    """What of an input decides an output: configs whole, references without their paths."""
    if isinstance(value, BaseModel):
        return {"__type__": type(value).__name__, **identity(value.model_dump(mode="json"))}
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in value.items() if k not in UNKEYED_FIELDS}
    if isinstance(value, list | tuple):
        return [identity(v) for v in value]
    return value


def output_key(stage: str, inputs: dict[str, Any], modules: tuple[str, ...]) -> str:
    """The key of a stage's output: its name, its inputs but `UNKEYED_PARAMS` (their references without
    `UNKEYED_FIELDS`) and the code version of `modules` and every project module they import."""
    return stable_hash(stage, {k: identity(v) for k, v in inputs.items() if k not in UNKEYED_PARAMS},
                       stage_code_version(*modules))


def task_key(task, inputs: dict[str, Any]) -> str:
    """`output_key` of a task: the stage is the task's name, the code its module's, the inputs those its cache policy
    selects (a zoo task keys on the parts of the zoo config it reads, not the whole config)."""
    select = getattr(task.cache_policy, "key_inputs", None)
    return output_key(task.name, select(inputs) if select else inputs, (task.fn.__module__,))


def cfg_parts(**parts: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Key inputs of a task taking the zoo config `cfg`: its other inputs, and of `cfg` only the named attribute paths
    (`prompts="prompts", n_ctx="model.n_ctx"`), so a setting the task never reads does not move its key."""
    getters = {name: attrgetter(path) for name, path in parts.items()}

    def select(inputs: dict[str, Any]) -> dict[str, Any]:
        cfg = inputs["cfg"]
        return {**{k: v for k, v in inputs.items() if k != "cfg"}, **{n: get(cfg) for n, get in getters.items()}}

    return select


def log() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a Prefect run, the module logger outside one (a task body called directly)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("sage")


# -- names in the Prefect UI -----------------------------------------------------------------------------------------


def artifact_slug(text: str) -> str:
    """`text` as part of a Prefect artifact key (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def rounded(rows: list[dict[str, Any]], digits: int = 4) -> list[dict[str, Any]]:
    """Table rows with floats rounded for display (artifacts)."""
    return [{k: round(v, digits) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def one_line(exc: BaseException) -> str:
    """An error as one line of at most 400 characters (its type when it says nothing)."""
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def needs_build(path: Path) -> bool:
    """True if the write-once output at `path` must be (re)computed; a damaged one is named in one log line (its
    writer then replaces it: `storage.atomic` never keeps a directory that fails its checksums)."""
    problem = records.output_problem(path)
    if problem is not None and Path(path).exists():
        log().warning(f"{problem}: recomputing it")
    return problem is not None


# -- the result store ----------------------------------------------------------------------------------------------
class StoredError(Exception):
    """A task's exception as a record keeps it: its type's name (`kind`) and its message on one line. It comes back
    as one of a fixed list of builtin kinds (a TaskError is a ValueError), never as a class a record names."""

    kind: str = "Exception"


# the builtin kinds an exception comes back as: the first in this order that its class derives from
_STORED_KINDS: tuple[type[BaseException], ...] = (TimeoutError, OSError, ValueError, RuntimeError, TypeError,
                                                  Exception, BaseException)
_STORED: dict[str, type[StoredError]] = {
    **{b.__name__: type(f"Stored{b.__name__}", (StoredError, b), {}) for b in _STORED_KINDS[:-2]},
    "Exception": StoredError, "BaseException": StoredError}  # an interrupt does not come back as one


def _stored_exception(exc: BaseException) -> dict[str, str]:
    base = next(b for b in _STORED_KINDS if isinstance(exc, b))
    return {"__exception__": getattr(exc, "kind", None) if isinstance(exc, StoredError) else type(exc).__name__,
            "base": base.__name__, "message": " ".join(str(exc).split())[:400]}


def _revived_exception(value: dict[str, Any]) -> Any:
    if set(value) != {"__exception__", "base", "message"}:
        return value
    exc = _STORED.get(str(value["base"]), _STORED["Exception"])(str(value["message"]))
    exc.kind = str(value["__exception__"])
    return exc


class ManifestSerializer(Serializer):
    """Plain JSON: typed references (`storage.refs`) and plain values in, the same out; a reference comes back as its
    class by its `ref` tag, from a fixed list: nothing in a record can name code to import or run. An exception (what
    Prefect persists for a failed task run) is stored as its type's name and a one-line message (`StoredError`)."""

    type: Literal["sage-json"] = SERIALIZER

    def dumps(self, obj: Any) -> bytes:
        def encode(value: Any) -> Any:
            if isinstance(value, BaseException):
                return _stored_exception(value)
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

        return json.dumps(refs.dump(obj), default=encode).encode()

    def loads(self, blob: bytes) -> Any:
        return refs.revive(json.loads(blob, object_hook=_revived_exception))


def serializer_of(record: bytes) -> str | None:
    """The serializer a raw cache record names (None if it is not a readable record)."""
    try:
        return json.loads(record)["metadata"]["serializer"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


def result_dir(home: SageHome) -> Path:
    return home.prefect_results()


class SageRecords(LocalFileSystem):
    """The cache record store: Prefect loads a record with whatever serializer the record names, so a record that does
    not name ours (a pickle planted in a shared data root) is refused here, at every read, never handed to it: Prefect
    takes the refusal as a missing record (a miss) when it checks for one, and as an error if it vanishes between
    that check and the read."""

    _block_type_name = "SAGE Cache Records"  # its own block type: LocalFileSystem's stays registered as it is

    def _only_ours(self, path: str, content: bytes) -> bytes:
        if serializer_of(content) != SERIALIZER:
            raise ValueError(f"cache record {record_path(self, path)} is not a SAGE JSON record; refusing to load it")
        return content

    async def aread_path(self, path: str) -> bytes:
        return self._only_ours(path, await super().aread_path(path))

    def read_path(self, path: str, **_kwargs: Any) -> bytes:
        return self._only_ours(path, LocalFileSystem.read_path(self, path, _sync=True))


def record_path(storage: Any, key: str) -> Path | None:
    """Where a local record store keeps the record `key` (its public `basepath`); None for any other store."""
    if not isinstance(storage, LocalFileSystem):
        return None
    return Path(storage.basepath or ".").expanduser().resolve() / key


def in_home(task, home: SageHome):
    """`task` with its cache records in `home` (every entry point, the CLI or a deployment's worker, shares them)."""
    out = task.with_options(result_serializer=ManifestSerializer())
    # set after construction: Prefect's constructor asks a block instance to be saved on the server (for remote task
    # workers); a Path, which it takes, becomes the same unsaved local store this is, less the refusal
    out.result_storage = SageRecords(basepath=str(result_dir(home)))
    return out


# -- the cache policy ----------------------------------------------------------------------------------------------
Check = Callable[[Any, SageHome, str], "str | None"]  # (the cached reference, the data root, the task's key)


def whole_dir(ref: refs.Ref, home: SageHome, _key: str) -> str | None:
    """The reference names a write-once directory: it is whole (marker there, every file as recorded)."""
    return records.dir_problem(home, ref)


def whole_parent(ref: refs.Ref, home: SageHome, _key: str) -> str | None:
    """The reference names a file of a write-once directory (a prompt table, the corpus)."""
    return records.parent_problem(home, ref)


def whole_keyed_dir(ref: refs.Ref, home: SageHome, key: str) -> str | None:
    """A human-named write-once directory (a zoo SAE, the tokenizer): whole, and its marker holds this key."""
    return records.keyed_dir_problem(home, ref, key)


def same_file(ref: refs.Ref, home: SageHome, _key: str) -> str | None:
    """A table rewritten in place: still there with the recorded content hash."""
    return records.same_file_problem(home, ref)


def is_ref(value: Any) -> bool:
    """A typed reference (`storage.refs`), as every cached SAGE task returns."""
    return isinstance(value, tuple(refs.REF_TYPES.values()))


@dataclass
class StageCache(CachePolicy):
    """Prefect's cache key is `task_key`; a hit is taken only while the output it names is still whole on disk
    (`check`): otherwise one log line names what is wrong, the record is dropped and the task recomputes."""

    check: Check | None = whole_dir
    key_inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # see `task_key`

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],  # Prefect's signature (by keyword)
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:  # noqa: ARG002
        key = task_key(task_ctx.task, inputs)
        store = task_ctx.result_store
        path = record_path(getattr(store, "result_storage", None), key)
        if path is None or not path.is_file():  # not a local result directory, or no record yet
            return key
        try:
            problem = self._record_problem(path, inputs, key)
        # a tampered record (not a reference) or one naming a path outside the data root: Prefect would log a
        # traceback and stop persisting this task's result, keeping the bad record; drop it instead
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            problem = f"cache record {path} is unreadable ({type(exc).__name__}: {exc})"
        if problem is not None:
            log().warning(f"{task_ctx.task.name}: {problem}: recomputing it")
            path.unlink(missing_ok=True)
        return key

    def _record_problem(self, path: Path, inputs: dict[str, Any], key: str) -> str | None:
        raw = path.read_bytes()
        # not ours (a pickle planted in a shared data root): dropped unread, so the task recomputes and overwrites
        # it (`SageRecords` refuses it again at read time, should it be swapped in after this look)
        if serializer_of(raw) != SERIALIZER:
            return f"cache record {path} is not a SAGE JSON record"
        if self.check is None or "home" not in inputs:
            return None
        ref = ManifestSerializer().loads(json.loads(raw)["result"].encode())
        if not is_ref(ref):
            return f"cache record {path} holds no reference"
        return self.check(ref, SageHome(inputs["home"]), key)


# OS errors a retry cannot mend: a full or read-only disk, no permission
LASTING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def is_transient(exc: BaseException | None) -> bool:
    """An I/O hiccup a retry may mend (raw, or behind the StoreError a store write turns it into)."""
    if isinstance(exc, StoreError):
        return _transient(exc.__cause__)
    return _transient(exc)


def _transient(exc: BaseException | None) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    return (isinstance(exc, OSError) and exc.errno not in LASTING_ERRNOS
            and not isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError))


def transient_only(_task, _task_run, state) -> bool:
    """Retry I/O hiccups (a shared filesystem, a busy disk), raw or behind the StoreError a store write turns them
    into; never retry a bad input, a bug, a full or read-only disk."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def stage_options(check: Check | None = whole_dir,
                  key_inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Decorator options of a cached SAGE task whose output `check` verifies on every cache hit (`key_inputs`: what
    of its inputs its key is made of, all of them by default)."""
    return dict(cache_policy=StageCache(check=check, key_inputs=key_inputs), persist_result=True,
                result_serializer=ManifestSerializer(), retries=2, retry_delay_seconds=[2, 10],
                retry_condition_fn=transient_only)


UNCACHED: dict[str, Any] = dict(persist_result=False, retries=2, retry_delay_seconds=[2, 10],
                                retry_condition_fn=transient_only)
