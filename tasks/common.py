"""What every SAGE Prefect task shares: the one key of each output, the cache policy built on it, the retry rule and
the result store (JSON records under SAGE_HOME/.prefect-results, never pickles).

`output_key` is the only place a key is made: from the inputs' content (manifests without their paths, configs), the
stage's name and the code version of the modules that stage runs. The task body uses it as its output's directory
name (or, for the zoo's human-named directories, records it in the marker and compares it on reuse), Prefect uses it
as the cache key (`StageCache`), and the flow records use it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.serializers import Serializer
from pydantic import BaseModel

from storage import records
from storage.hashing import stable_hash, stage_code_version
from storage.home import SageHome

Manifest = dict[str, Any]
# manifest fields that say where an output lies, not what it is (its content hash says that)
PATH_FIELDS = frozenset({"path", "quality", "ranking", "validation"})
SERIALIZER = "sage-json"


def identity(value: Any) -> Any:
    """What of an input decides an output: configs whole, manifests without their paths."""
    if isinstance(value, BaseModel):
        return {"__type__": type(value).__name__, **identity(value.model_dump(mode="json"))}
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in value.items() if k not in PATH_FIELDS}
    if isinstance(value, list | tuple):
        return [identity(v) for v in value]
    return value


def output_key(stage: str, inputs: dict[str, Any], modules: tuple[str, ...]) -> str:
    """The key of a stage's output: its name, its inputs (never `home`: a moved data root keeps its keys) and the code
    version of `modules` and every project module they import."""
    return stable_hash(stage, {k: identity(v) for k, v in inputs.items() if k != "home"},
                       stage_code_version(*modules))


def task_key(task, inputs: dict[str, Any]) -> str:
    """`output_key` of a task: the stage is the task's name, the code its module's."""
    return output_key(task.name, inputs, (task.fn.__module__,))


def log() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a Prefect run, the module logger outside one (a task body called directly)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("sage")


def needs_build(path: Path) -> bool:
    """True if the write-once output at `path` must be (re)computed; a damaged one is named in one log line (its
    writer then replaces it: `storage.atomic` never keeps a directory that fails its checksums)."""
    problem = records.output_problem(path)
    if problem is not None and Path(path).exists():
        log().warning(f"{problem}: recomputing it")
    return problem is not None


# -- the result store ----------------------------------------------------------------------------------------------
class ManifestSerializer(Serializer):
    """Plain JSON: a manifest in, the same manifest out; nothing in a record can name code to import or run."""

    type: Literal["sage-json"] = SERIALIZER

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob)


def serializer_of(record: bytes) -> str | None:
    """The serializer a raw cache record names (None if it is not a readable record)."""
    try:
        return json.loads(record)["metadata"]["serializer"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


def result_dir(home: SageHome) -> Path:
    return home.prefect_results()


def in_home(task, home: SageHome):
    """`task` with its cache records in `home` (every entry point, the CLI or a deployment's worker, shares them)."""
    return task.with_options(result_storage=result_dir(home), result_serializer=ManifestSerializer())


# -- the cache policy ----------------------------------------------------------------------------------------------
Check = Callable[[Manifest, SageHome, str], "str | None"]


def whole_dir(m: Manifest, home: SageHome, key: str) -> str | None:
    """The manifest's `path` is a write-once directory: it is whole (marker there, every file as recorded)."""
    return records.output_problem(home.at(m["path"]))


def whole_parent(m: Manifest, home: SageHome, key: str) -> str | None:
    """The manifest's `path` is a file of a write-once directory (a prompt table, the corpus)."""
    return records.output_problem(home.at(m["path"]).parent)


def whole_keyed_dir(m: Manifest, home: SageHome, key: str) -> str | None:
    """A human-named write-once directory (a zoo SAE, the tokenizer): whole, and its marker holds this key."""
    path = home.at(m["path"])
    return records.output_problem(path) or records.key_problem(path, key)


def same_file(m: Manifest, home: SageHome, key: str) -> str | None:
    """A table rewritten in place: still there with the recorded content hash."""
    return records.file_problem(home.at(m["path"]), m["hash"])


@dataclass
class StageCache(CachePolicy):
    """Prefect's cache key is `task_key`; a hit is taken only while the output it names is still whole on disk
    (`check`): otherwise one log line names what is wrong, the record is dropped and the task recomputes."""

    check: Check | None = whole_dir

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = task_key(task_ctx.task, inputs)
        store = task_ctx.result_store
        resolve = getattr(getattr(store, "result_storage", None), "_resolve_path", None)
        if resolve is None:  # not a local result directory: nothing to look at
            return key
        path = Path(resolve(key))
        if not path.is_file():
            return key
        raw = path.read_bytes()
        # Prefect loads a record with the serializer the record names: one that is not ours (a pickle planted in a
        # shared data root) is dropped unread, so the task recomputes and overwrites it
        problem = None if serializer_of(raw) == SERIALIZER else f"cache record {path} is not a SAGE JSON record"
        if problem is None and self.check is not None and "home" in inputs:
            manifest = ManifestSerializer().loads(json.loads(raw)["result"].encode())
            problem = self.check(manifest, SageHome(inputs["home"]), key)
        if problem is not None:
            log().warning(f"{task_ctx.task.name}: {problem}: recomputing it")
            path.unlink(missing_ok=True)
        return key


def transient_only(task, task_run, state) -> bool:
    """Retry I/O hiccups (a shared filesystem, a busy disk); never retry a bad input or a bug."""
    try:
        state.result()
    except (OSError, TimeoutError) as exc:
        return not isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError)
    except Exception:
        return False
    return False


def stage_options(check: Check | None = whole_dir) -> dict[str, Any]:
    """Decorator options of a cached SAGE task whose output `check` verifies on every cache hit."""
    return dict(cache_policy=StageCache(check=check), persist_result=True, result_serializer=ManifestSerializer(),
                retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)


UNCACHED: dict[str, Any] = dict(persist_result=False, retries=2, retry_delay_seconds=[2, 10],
                                retry_condition_fn=transient_only)
