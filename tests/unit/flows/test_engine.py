"""The engine choice (`--cluster`): its forms and one-line errors, the device each unit gets, where an SAE's units go,
functions that travel to workers by reference, and a scheduler that cannot be reached failing before any work."""

from __future__ import annotations

import time

import pytest

from flows import engine
from flows.engine import ClusterError, ClusterSpec, Engine, parse_cluster


@pytest.mark.parametrize(("spec", "want"), [
    ("threads", ClusterSpec("threads")),
    ("local", ClusterSpec("local", None)),
    ("local:3", ClusterSpec("local", 3)),
    (" local:1 ", ClusterSpec("local", 1)),
    ("tcp://127.0.0.1:8786", ClusterSpec("remote", address="tcp://127.0.0.1:8786")),
    ("tcp://scheduler.cluster.example:8786", ClusterSpec("remote", address="tcp://scheduler.cluster.example:8786")),
])
def test_parse_cluster_forms(spec, want):
    assert parse_cluster(spec) == want


@pytest.mark.parametrize("spec", ["thread", "local:0", "local:x", "local:-1", "local:999", "tcp://host",
                                  "http://host:8786", "", "tcp://a b:1"])
def test_parse_cluster_refuses_in_one_line(spec):
    with pytest.raises(ClusterError) as e:
        parse_cluster(spec)
    assert "\n" not in str(e.value) and ("threads" in str(e.value) or "local:2" in str(e.value))


def test_check_cluster_checks_devices_here_but_not_for_a_remote_cluster():
    from sage_core.model.devices import DeviceError

    with pytest.raises(DeviceError):
        engine.check_cluster("threads", "cuda:7")  # this machine: no such GPU
    with pytest.raises(ValueError, match="not a device"):
        engine.check_cluster("local:2", "tpu")
    assert engine.check_cluster("tcp://127.0.0.1:8786", "cuda:7").kind == "remote"  # resolved on its workers


def test_unit_devices_round_robin_pinned_and_remote():
    threads = Engine(ClusterSpec("threads"), ("cpu",))
    assert threads.unit_devices("cpu", 3) == ["cpu"] * 3
    assert threads.unit_devices("auto", 2) == ["cpu", "cpu"]  # no GPU here: auto is the CPU
    remote = Engine(ClusterSpec("remote", address="tcp://h:1"), ())
    assert remote.unit_devices("cuda:1", 2) == ["cuda:1", "cuda:1"]
    pinned = Engine(ClusterSpec("local"), ("cpu",), pinned=True)
    assert pinned.unit_devices("cpu", 2) == ["cpu", "cpu"]  # pinned workers still run a CPU request on the CPU


def test_unit_devices_spread_over_gpus(monkeypatch):
    monkeypatch.setattr(engine, "resolve_devices", lambda spec: ("cuda:0", "cuda:1") if spec != "cpu" else ("cpu",))
    threads = Engine(ClusterSpec("threads"), ("cuda:0", "cuda:1"))
    assert threads.unit_devices("auto", 5) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert threads.task_runner()._max_workers >= 2
    pinned = Engine(ClusterSpec("local"), ("cuda:0", "cuda:1"), pinned=True)
    assert pinned.unit_devices("auto", 3) == ["cuda"] * 3  # each worker sees only its own GPU


def test_local_cluster_refuses_a_worker_count_that_differs_from_the_gpus():
    with pytest.raises(ClusterError, match="one worker per GPU"):
        engine._local_cluster(3, ("cuda:0", "cuda:1"))


def test_assignment_gives_each_worker_an_even_share_with_one_hooks_specs_together():
    eng = Engine(ClusterSpec("local", 2), ("cpu",), client=object(), workers=["tcp://a:1", "tcp://b:2"])
    specs = [f"zoo:blocks.{i // 3}.hook_resid_pre--topk-{i}" for i in range(6)][::-1]
    worker_of = eng.assign(specs)
    assert worker_of == eng.assign(sorted(specs))  # stable: the order given does not matter
    assert {w for s, w in worker_of.items() if "blocks.0." in s} == {"tcp://a:1"}
    assert {w for s, w in worker_of.items() if "blocks.1." in s} == {"tcp://b:2"}
    # one hook's SAEs only: still split, so no worker stands idle
    same = eng.assign([f"r/blocks.0.hook_resid_pre/{i}" for i in range(4)])
    assert sorted(same.values()) == ["tcp://a:1", "tcp://a:1", "tcp://b:2", "tcp://b:2"]
    threads = Engine(ClusterSpec("threads"), ("cpu",))
    assert threads.assign(["zoo:x"]) == {"zoo:x": None}


def test_torch_threads_share_the_cores_between_units_run_at_once(monkeypatch):
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 8)
    assert (engine.cpu_share(2), engine.cpu_share(3), engine.cpu_share(16), engine.cpu_share(0)) == (4, 2, 1, 8)


def test_unreachable_scheduler_fails_in_one_line_before_any_work(monkeypatch):
    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 2)
    t0 = time.perf_counter()
    with pytest.raises(ClusterError) as e, engine.open_engine("tcp://127.0.0.1:9", "cpu"):
        pytest.fail("the block ran without a scheduler")
    assert "no Dask scheduler answers" in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 30
    assert engine.current().spec.kind == "threads"  # nothing stays open


def test_threads_engine_counts_this_process_loads():
    from tasks import loaded

    with engine.open_engine("threads", "cpu") as eng:
        assert engine.current() is eng and not eng.distributed and eng.n_workers == 1
        before = eng.loads()
        loaded.once("references", ("engine-test", time.time()), lambda: 1)
        assert eng.loads()["references"] == before["references"] + 1
    assert engine.current() is not eng


def test_a_running_scheduler_is_used_and_left_running():
    """`tcp://HOST:PORT`: the engine connects to a scheduler someone else started (here an in-process cluster), counts
    its workers' loads, resolves devices on the workers, and leaves the cluster running when the command ends."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None,
                      host="127.0.0.1", protocol="tcp") as cluster:
        with engine.open_engine(cluster.scheduler_address, "auto") as eng:
            assert eng.distributed and eng.spec.kind == "remote" and eng.n_workers == 1
            assert eng.workers == sorted(cluster.scheduler_info["workers"])
            assert eng.unit_devices("auto", 2) == ["auto", "auto"]  # resolved where each unit runs
            assert isinstance(eng.loads(), dict)  # the workers answer
            assert eng.task_runner().address == cluster.scheduler_address
        from tasks import progress

        assert progress._forward is None  # its worker runs in this process: progress stays here
        with Client(cluster.scheduler_address, timeout=10) as c:  # still there
            assert len(c.scheduler_info()["workers"]) == 1


def test_the_per_sae_work_follows_the_activated_engine_not_the_last_opened():
    from tasks import remote

    cluster = Engine(ClusterSpec("local", 2), ("cpu",), client=object(), workers=["tcp://a:1"])
    threads = Engine(ClusterSpec("threads"), ("cpu",))
    with engine.activated(cluster):
        assert remote._client is cluster.client
        with engine.activated(threads):  # a benchmark running threads while a cluster is open
            assert not remote.distributed()
        assert remote._client is cluster.client
    assert not remote.distributed()


def test_workers_on_this_host_are_told_apart_from_others():
    here = {"10.0.0.5", "localhost", "::1"}
    assert engine.on_this_host(["tcp://127.0.0.1:4000", "tcp://10.0.0.5:4001", "tcp://[::1]:4002"], here)
    assert not engine.on_this_host(["tcp://127.0.0.1:4000", "tcp://10.0.0.6:4001"], here)
    assert not engine.on_this_host([], here)
    assert "127.0.0.1" in engine._this_host()


def test_the_prefect_api_this_process_uses_is_the_one_its_task_runs_carry_to_workers():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert engine.prefect_api_url(start=False) == "http://127.0.0.1:9/api"
        with engine._workers_share_prefect_api("http://127.0.0.1:8/api"):
            assert PREFECT_API_URL.value() == "http://127.0.0.1:8/api"  # what prefect-dask sends with each task run
        with engine._workers_share_prefect_api(None):
            assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"


@pytest.mark.slow
def test_local_workers_use_the_flow_processes_prefect_api_and_start_no_server_of_their_own(monkeypatch):
    """A worker with no Prefect API starts a temporary server at its first task run, which outlives the worker when it
    is killed: a local cluster's workers get the flow process's API (here a Prefect setting only, as the CLI's
    temporary server is) in their environment, and in the settings every task run carries to them."""
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = "http://127.0.0.1:9/api"
    monkeypatch.setattr(engine, "warm_code_versions", lambda: None)  # not what this test is about: seconds saved
    with temporary_settings(updates={PREFECT_API_URL: url}), engine.open_engine("local:1", "cpu") as eng:
        assert set(eng.client.run(os.getenv, "PREFECT_API_URL").values()) == {url}
        assert PREFECT_API_URL.value() == url
