"""Where a task's compute runs: in this process, or on a Dask worker.

On a Dask cluster, Prefect's Dask task runner costs each task run about 0.25 s of the worker's time before its body
starts (it rebuilds Prefect's settings and an API client per run; measured in `benchmarks/scale.py`), as much as a
small SAE's whole scoring. So the tasks dispatched once per SAE (`resolve-sae`, `score-sae`) run as Prefect task runs
in the flow's process, on a thread pool (what the Prefect UI shows, retries, names: unchanged), and send their body to
the worker the engine chose as a plain Dask call (`compute`): the worker does the work and keeps what it loaded (the
model, the SAE), and needs no access to Prefect's API. A worker that dies mid-call loses nothing: Dask runs the call
again elsewhere and every result is written atomically under its content key.

The engine (`flows.engine`) sets the Dask client while it is open; without one, `compute` calls in this process, with
torch's threads shared between the calls running at once (`sharing_cores`). A Dask worker gets its share of the cores
from the engine.
"""

from __future__ import annotations

import threading
import uuid
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


def compute(fn: Callable[..., T], *args: Any, worker: str | None = None, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on `worker` (preferably: any worker when it is busy or gone), or here without a
    cluster; its exception is raised here as it was raised there. `fn` must be importable by name on the workers."""
    client = _client
    if client is None:
        with sharing_cores():
            return fn(*args, **kwargs)
    where = {"workers": [worker], "allow_other_workers": True} if worker else {}
    future = client.submit(fn, *args, key=f"{fn.__name__}-{uuid.uuid4().hex}", pure=False, **where, **kwargs)
    try:
        return future.result()
    finally:
        future.release()
