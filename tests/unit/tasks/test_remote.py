"""Compute sent to a worker or run here (`tasks.remote`): the same result, the same exception, on the worker asked."""

from __future__ import annotations

from typing import Any

import pytest

from tasks import remote


def _pid_and(x: int) -> tuple[int, int]:
    import os

    return os.getpid(), x * 2


def _fails(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_without_a_cluster_the_call_runs_here():
    import os

    assert not remote.distributed()
    assert remote.compute(_pid_and, 3) == (os.getpid(), 6)
    with pytest.raises(ValueError, match="bad 1"):
        remote.compute(_fails, 1)


class FakeClient:
    """Records what `compute` asks of Dask; runs the call at once."""

    def __init__(self, workers=("tcp://w:1",)):
        self.asked: list[dict] = []
        self.workers = workers

    def nthreads(self):
        return {w: 1 for w in self.workers}

    def submit(self, fn, *args, **kwargs):
        opts = {k: kwargs.pop(k, None) for k in ("key", "pure", "workers", "allow_other_workers")}
        self.asked.append(opts)
        outcome = {}
        try:
            outcome["value"] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

        class Future:
            key = opts["key"]

            def exception(self, timeout=None):  # noqa: ARG002
                return outcome.get("error")

            def result(self, timeout=None):  # noqa: ARG002
                if "error" in outcome:
                    raise outcome["error"]
                return outcome["value"]

            def release(self):
                outcome["released"] = True

        return Future()


def test_with_a_cluster_the_call_goes_to_the_worker_named_and_raises_as_it_raised():
    client = FakeClient()
    with remote.dispatching_to(client):
        assert remote.distributed()
        assert remote.compute(_pid_and, 4, worker="tcp://w:1")[1] == 8
        with pytest.raises(ValueError, match="bad 2"):
            remote.compute(_fails, 2)
    assert not remote.distributed()
    first, second = client.asked
    # never deduplicated by Dask (each call is a new one), named for the function (the kill -9 test finds it by it)
    assert first["pure"] is False and first["key"].startswith("_pid_and-") and first["key"] != second["key"]
    assert first["workers"] == ["tcp://w:1"] and first["allow_other_workers"] is True
    assert second["workers"] is None and second["allow_other_workers"] is None  # Dask refuses the one without the other


def test_a_call_for_a_worker_that_has_gone_goes_to_any_worker():
    """A restarted worker has a new address: work pinned to the old one would wait in Dask's `no-worker` for ever."""
    client = FakeClient(workers=("tcp://new:2",))
    with remote.dispatching_to(client):
        assert remote.compute(_pid_and, 4, worker="tcp://gone:1")[1] == 8
    (asked,) = client.asked
    assert asked["workers"] is None and asked["allow_other_workers"] is None


def test_calls_run_here_share_the_cores_and_give_them_back(monkeypatch):
    import threading
    import time

    import torch

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    before = torch.get_num_threads()
    seen, inside, go = {}, threading.Barrier(2), threading.Event()

    def one(name: str) -> None:
        with remote.sharing_cores():
            inside.wait(timeout=30)  # both running: each has half the cores
            seen[name] = torch.get_num_threads()
            go.wait(timeout=30)

    threads = [threading.Thread(target=one, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # a thread that failed must fail the test, not hang it
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.set()
    for t in threads:
        t.join()
    assert sorted(seen.values()) in ([2, 2], [2, 4])  # the first may have started alone, with every core
    with remote.sharing_cores():
        assert torch.get_num_threads() == 4  # alone: every core
    assert torch.get_num_threads() == before


# -- a real cluster whose only worker dies ---------------------------------------------------------------------------


def _sleep_then_pid(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


@pytest.fixture
def one_worker():
    """A Dask cluster of one worker process on 127.0.0.1 (its nanny restarts it, at a new address, if it dies)."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.CRITICAL)
    client = Client(cluster, set_as_default=False)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()


def _call_in_background(client, *args, **kwargs) -> tuple[dict, Any]:
    import threading

    out: dict = {}

    def call() -> None:
        with remote.dispatching_to(client):
            try:
                out["value"] = remote.compute(_sleep_then_pid, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                out["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return out, thread


def _wait_until_running(client, prefix: str, limit_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + limit_s
    while not any(str(k).startswith(prefix) for keys in client.processing().values() for k in keys):
        assert time.monotonic() < deadline, f"{prefix} never started"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_call_pinned_to_the_only_worker_finishes_on_its_restarted_successor_when_it_is_killed(one_worker):
    """The worker a call is pinned to is killed mid-call; its nanny starts a new one at another address. Dask leaves
    work restricted to the dead address in `no-worker` for ever (loose restrictions are ignored when a worker joins):
    the call must finish on the new worker."""
    import os
    import signal

    _cluster, client = one_worker
    ((address, pid),) = client.run(os.getpid).items()
    out, thread = _call_in_background(client, 2.0, worker=address)
    _wait_until_running(client, "_sleep_then_pid")
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=45)
    assert not thread.is_alive(), "the call hung after its only worker died"
    assert "error" not in out, out
    assert out["value"] != pid  # done again, by the new worker


@pytest.mark.slow
def test_a_call_fails_in_one_line_after_the_stated_wait_when_no_worker_comes_back(one_worker, monkeypatch):
    import time

    monkeypatch.setattr(remote, "WORKER_WAIT_S", 3.0)
    cluster, client = one_worker
    address = next(iter(client.nthreads()))
    out, thread = _call_in_background(client, 30.0, worker=address)
    _wait_until_running(client, "_sleep_then_pid")
    t0 = time.monotonic()
    cluster.scale(0)  # the worker leaves and none replaces it
    thread.join(timeout=30)
    assert not thread.is_alive(), "the call hung with no worker left"
    error = out.get("error")
    assert isinstance(error, remote.NoWorkers), out
    assert time.monotonic() - t0 < 20
    message = str(error)
    assert "\n" not in message and "3 s" in message and "worker" in message
    # the next call on the dead cluster fails at once, not after another wait
    t1 = time.monotonic()
    out, thread = _call_in_background(client, 0.0)
    thread.join(timeout=10)
    assert isinstance(out.get("error"), remote.NoWorkers) and time.monotonic() - t1 < 5
