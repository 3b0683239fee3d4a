"""Compute sent to a worker or run here (`tasks.remote`): the same result, the same exception, on the worker asked."""

from __future__ import annotations

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

    def __init__(self):
        self.asked: list[dict] = []

    def submit(self, fn, *args, **kwargs):
        opts = {k: kwargs.pop(k, None) for k in ("key", "pure", "workers", "allow_other_workers")}
        self.asked.append(opts)
        outcome = {}
        try:
            outcome["value"] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

        class Future:
            def result(self):
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
