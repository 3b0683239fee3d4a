"""The evaluate flow on a Dask cluster of two worker processes (`--cluster local:2`): the same scores.parquet as on
threads, byte for byte; each worker reads the model and each SAE at most once; and a worker killed with SIGKILL in
the middle of scoring costs nothing but time: its units run again elsewhere and the scores are the same."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from sage_core.locate.attribution import LocateConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LCFG = LocateConfig(n_pairs=8, n_validate_top=2, n_validate_random=1, ig_steps=2)


def _cfg(zoo_cfg):
    from sage_core.config import EvaluateConfig

    return EvaluateConfig(zoo=zoo_cfg, locate=LCFG, per_group=1, core_sequences=32, device="cpu",
                          min_task_accuracy=0.0)


def _rescore(home: Path) -> None:
    """Forget every score (parts, core metrics, references, runs, cache records): the next run scores again, on
    the zoo, ground truth and captures already there."""
    for d in ("scores", "reports", ".prefect-results"):
        shutil.rmtree(home / d, ignore_errors=True)


@pytest.fixture(scope="module")
def threads_run(tiny_zoo, tmp_path_factory):
    from flows.evaluate import run_evaluate
    from tasks import loaded

    src, zoo_cfg, *_ = tiny_zoo
    home = tmp_path_factory.mktemp("engine") / "home"
    shutil.copytree(src, home, ignore=shutil.ignore_patterns("scores", "reports", ".prefect-results"))
    cfg = _cfg(zoo_cfg)
    loaded.clear()  # what earlier tests read in this process does not count
    # named runs: the evaluate flow's own tests look for the run its tiny zoo names by default in the Prefect UI
    out = run_evaluate(cfg, home=str(home), run="engine-threads", cluster="threads")  # with the ground truth, once
    return home, cfg, out, Path(out["scores"]).read_bytes()


def _kill_a_scoring_worker(eng, done: dict) -> None:
    """SIGKILL the first worker seen running a scoring unit (its nanny starts a fresh one)."""
    pids = eng.worker_pids()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not done.get("stop"):
        for worker, keys in eng.client.processing().items():
            if any(str(k).startswith("_score_work") for k in keys) and worker in pids:
                os.kill(pids[worker], signal.SIGKILL)
                done["killed"] = pids[worker]
                return
        time.sleep(0.05)


def test_local_cluster_scores_equal_threads_loads_once_per_worker_and_survives_kill_9(threads_run):
    from flows import engine
    from flows.evaluate import evaluate
    from flows.settings import results_in
    from storage.home import SageHome

    home, cfg, threads_out, threads_scores = threads_run
    n_saes = len(list((home / "zoo" / cfg.zoo.model.name / "saes").iterdir()))
    # threads: one process reads the model once and each SAE once
    assert threads_out["loads"]["processes"] == 1
    assert threads_out["loads"]["model"] <= 1 and threads_out["loads"]["sae"] <= n_saes

    _rescore(home)
    with results_in(SageHome(home)), engine.open_engine("local:2", "cpu") as eng:
        assert eng.n_workers == 2
        out = eng.flow(evaluate)(cfg=cfg, home=str(home), run="engine-local")
        assert out["n_failed"] == 0
        assert Path(out["scores"]).read_bytes() == threads_scores  # same results on every engine
        loads = out["loads"]
        assert loads["processes"] == 2
        assert 1 <= loads["model"] <= 2, loads  # at most once per worker; the flow's process reads nothing
        assert n_saes <= loads["sae"] <= 2 * n_saes, loads
        assert loads["references"] <= 2 * len(cfg.zoo.tasks), loads

        _rescore(home)
        done: dict = {}
        killer = threading.Thread(target=_kill_a_scoring_worker, args=(eng, done), daemon=True)
        killer.start()
        state = eng.flow(evaluate)(cfg=cfg, home=str(home), run="engine-kill", return_state=True)
        done["stop"] = True
        killer.join()
        assert "killed" in done, "no scoring unit was seen running: nothing was killed"
        assert state.is_completed(), state.message
        again = state.result()
        assert again["n_failed"] == 0
        assert Path(again["scores"]).read_bytes() == threads_scores  # the killed worker's units ran elsewhere


def _kill_a_scoring_worker_noting_its_children(eng, done: dict) -> None:
    """`_kill_a_scoring_worker`, noting the command lines of the worker's child processes just before the kill."""
    import psutil

    pids = eng.worker_pids()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not done.get("stop"):
        for worker, keys in eng.client.processing().items():
            if any(str(k).startswith("_score_work") for k in keys) and worker in pids:
                done["children"] = [" ".join(c.cmdline()) for c in psutil.Process(pids[worker]).children(True)]
                os.kill(pids[worker], signal.SIGKILL)
                done["killed"] = pids[worker]
                return
        time.sleep(0.05)


def test_the_only_worker_killed_mid_scoring_costs_nothing_but_time(threads_run):
    """Issue #27 item 7: `--cluster local:1`, its one worker killed with SIGKILL while it scores. The nanny starts a
    new worker at a new address; the units pinned to the old one waited in Dask's `no-worker` for ever. They run on
    the new worker, the run completes with the same scores, and the killed worker left no Prefect server behind (the
    workers use the flow process's API: none of their own)."""
    from flows import engine
    from flows.evaluate import evaluate
    from flows.settings import results_in
    from storage.home import SageHome

    home, cfg, _threads_out, threads_scores = threads_run
    _rescore(home)
    with results_in(SageHome(home)), engine.open_engine("local:1", "cpu") as eng:
        done: dict = {}
        killer = threading.Thread(target=_kill_a_scoring_worker_noting_its_children, args=(eng, done), daemon=True)
        killer.start()
        t0 = time.monotonic()
        state = eng.flow(evaluate)(cfg=cfg, home=str(home), run="engine-kill-only-worker", return_state=True)
        done["stop"] = True
        killer.join()
        assert "killed" in done, "no scoring unit was seen running: nothing was killed"
        assert state.is_completed(), state.message
        assert time.monotonic() - t0 < 600
        again = state.result()
        assert again["n_failed"] == 0
        assert Path(again["scores"]).read_bytes() == threads_scores
    assert not [c for c in done["children"] if "uvicorn" in c], done["children"]  # no server of its own to orphan
