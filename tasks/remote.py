"""Where a task's compute runs: in this process, or on a Dask worker.

On a Dask cluster, Prefect's Dask task runner costs each task run about 0.25 s of the worker's time before its body
starts (it rebuilds Prefect's settings and an API client per run; measured in `benchmarks/scale.py`), as much as a
small SAE's whole scoring. So the tasks dispatched once per SAE (`resolve-sae`, `score-sae`) run as Prefect task runs
in the flow's process, on a thread pool (what the Prefect UI shows, retries, names: unchanged), and send their body to
the worker the engine chose as a plain Dask call (`compute`): the worker does the work and keeps what it loaded (the
model, the SAE), and needs no access to Prefect's API. A worker that dies mid-call loses nothing: the call runs again
on another worker, or on the one its nanny starts in its place, and every result is written atomically under its
content key. A call waits at most `WORKER_WAIT_S` seconds (SAGE_WORKER_WAIT_S) for a cluster left with no worker at
all, then fails in one line (`NoWorkers`), as does every later call while none is back.

The engine (`flows.engine`) sets the Dask client while it is open; without one, `compute` calls in this process, with
torch's threads shared between the calls running at once (`sharing_cores`). A Dask worker gets its share of the cores
from the engine.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_client: Any = None
_lock = threading.Lock()


@contextmanager
def dispatching_to(client: Any) -> Iterator[None]:
    """`compute` sends calls to `client`'s workers while the block runs (then back to what it was)."""
    global _client
    with _lock:
        before, _client = _client, client
    try:
        yield
    finally:
        with _lock:
            _client = before


_running = 0


@contextmanager
def sharing_cores() -> Iterator[None]:
    """Torch threads for this thread while the block runs: the cores shared by the calls running at once in this
    process (`threads`: one SAE alone gets every core, two get half each). Torch keeps the count per thread once set,
    so each call sets its own; it is put back afterwards."""
    import os

    import torch

    global _running
    with _lock:
        _running += 1
        share = max(1, (os.cpu_count() or 1) // _running)
    before = torch.get_num_threads()
    torch.set_num_threads(share)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        with _lock:
            _running -= 1


def distributed() -> bool:
    return _client is not None


WORKER_WAIT_S = float(os.environ.get("SAGE_WORKER_WAIT_S", "600"))
"""How long a call waits for a cluster that has no worker at all (every one died or left) before it fails."""
POLL_S = 1.0  # how often a waiting call looks at the cluster (one scheduler call per period for the whole process)


class NoWorkers(RuntimeError):
    """The cluster has had no worker for `WORKER_WAIT_S` seconds: the call is given up (one line says what to do)."""


class _Workers:
    """The workers a cluster has, as last seen (at most one scheduler call per `POLL_S` for every call waiting in this
    process), and since when it has had none."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: frozenset[str] = frozenset()
        self.seen_at = float("-inf")
        self.none_since: float | None = None

    def now_live(self, client: Any) -> frozenset[str]:
        with self.lock:
            now = time.monotonic()
            if now - self.seen_at >= POLL_S:
                self.live, self.seen_at = frozenset(client.nthreads()), now
                if self.live:
                    self.none_since = None
                elif self.none_since is None:
                    self.none_since = now
            return self.live

    def gone_for(self) -> float:
        """Seconds the cluster has had no worker (0 while it has one)."""
        with self.lock:
            return 0.0 if self.none_since is None else time.monotonic() - self.none_since


_seen: weakref.WeakKeyDictionary[Any, _Workers] = weakref.WeakKeyDictionary()


def _workers_of(client: Any) -> _Workers:
    with _lock:
        try:
            return _seen[client]
        except KeyError:
            _seen[client] = w = _Workers()
            return w


def _no_workers(waited: float) -> NoWorkers:
    return NoWorkers(f"the Dask cluster has had no worker for {waited:.0f} s (every worker died or left and none came "
                     f"back within {WORKER_WAIT_S:g} s); start workers for its scheduler, or use --cluster threads or "
                     "local, and run the command again (every finished result is kept); SAGE_WORKER_WAIT_S sets "
                     "this wait")


def _submit(client: Any, fn: Callable[..., T], args: tuple, kwargs: dict, worker: str | None) -> Any:
    where = {"workers": [worker], "allow_other_workers": True} if worker else {}
    return client.submit(fn, *args, key=f"{fn.__name__}-{uuid.uuid4().hex}", pure=False, **where, **kwargs)


def _runs_somewhere(client: Any, key: str) -> bool:
    return any(key in keys for keys in client.processing().values())


def compute(fn: Callable[..., T], *args: Any, worker: str | None = None, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on `worker` (preferably: any worker when it is busy or gone), or here without a
    cluster; its exception is raised here as it was raised there. `fn` must be importable by name on the workers.

    Dask leaves a call restricted to a worker that has gone (a restarted worker has a new address) in `no-worker` for
    good once no worker was running when it was rescheduled (it ignores `allow_other_workers` when a worker joins): a
    call whose worker has gone, and that runs nowhere, is sent again to any worker. With no worker at all for
    `WORKER_WAIT_S` seconds it fails (`NoWorkers`)."""
    client = _client
    if client is None:
        with sharing_cores():
            return fn(*args, **kwargs)
    seen = _workers_of(client)
    live = seen.now_live(client)
    if not live and seen.gone_for() >= WORKER_WAIT_S:
        raise _no_workers(seen.gone_for())
    pinned = worker if worker in live else None
    future = _submit(client, fn, args, kwargs, pinned)
    try:
        while True:
            try:  # wait for the call to end, not for its result to arrive (that may take longer than the poll)
                future.exception(timeout=POLL_S)
            except TimeoutError:
                pass
            else:
                return future.result()
            live = seen.now_live(client)
            if not live and seen.gone_for() >= WORKER_WAIT_S:
                future.cancel()
                raise _no_workers(seen.gone_for()) from None
            if pinned is not None and pinned not in live and not _runs_somewhere(client, future.key):
                future.cancel()
                future = _submit(client, fn, args, kwargs, None)
                pinned = None
    finally:
        future.release()
