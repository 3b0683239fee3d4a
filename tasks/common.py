"""What every SAGE Prefect task shares: the cache key, the retry rule and the result store."""

from __future__ import annotations

from typing import Any

from prefect.context import TaskRunContext

from storage.hashing import code_version, stable_hash

CODE_PACKAGES = ("sage_core", "storage", "tasks")


def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Task name + its parameters (configs and input manifests, which carry content hashes) + the code version."""
    return stable_hash(context.task.name, parameters, code_version(*CODE_PACKAGES))


def transient_only(task, task_run, state) -> bool:
    """Retry I/O hiccups (a shared filesystem, a busy disk); never retry a bad input or a bug."""
    try:
        state.result()
    except (OSError, TimeoutError) as exc:
        return not isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError)
    except Exception:
        return False
    return False


TASK_DEFAULTS: dict[str, Any] = dict(
    cache_key_fn=cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=transient_only,
)
