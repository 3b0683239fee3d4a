"""`make serve`: start whatever of the service is not running, in order, and mark Crashed the runs left behind."""

from __future__ import annotations

import time
from collections.abc import Callable

from flows.service.config import STOP_ORDER, Service
from flows.service.postgres import start_postgres
from flows.service.processes import _stop_one, status
from flows.service.server import create_pool, deploy, ensure_auth, start_server
from flows.service.service_user import check_runnable, hand_over, service_account, stop_a_worker_of_another_user
from flows.service.worker import crash_orphaned_runs, start_worker


def start(svc: Service) -> dict[str, float]:
    """Start whatever of the service is not running (a second `make serve` reuses what runs and deploys again);
    returns each step's seconds. A step that fails stops what this call started and says what to do."""
    svc.home.ensure_writable()
    svc.dir.mkdir(mode=0o711, parents=True, exist_ok=True)  # postgres may pass through to its data, not list it
    svc.inbox.mkdir(exist_ok=True)  # the nightly run's default source: present from the start, not a source error
    ensure_auth(svc)
    if (pw := service_account(svc)) is not None:  # root: the worker runs as the service user
        stop_a_worker_of_another_user(svc, pw)
    before = {n for n, pid in status(svc).items() if pid is not None}
    steps: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        svc.say(f"  {name} ...")
        value = fn()
        steps[name] = time.perf_counter() - t0
        svc.say(f"  {name}: {steps[name]:.1f} s")
        return value

    if pw is not None:
        if "worker" not in before:  # before anything starts: a closed venv is one line, not a half-started service
            step("service user", lambda: check_runnable(svc, pw))
        # on every start: what root wrote into the data root since is the worker's to write again
        step("data root", lambda: hand_over(svc, pw))
    try:
        db_url = step("postgres", lambda: start_postgres(svc))
        step("server", lambda: start_server(svc, str(db_url)))
        step("work-pool", lambda: create_pool(svc))
        step("deploy", lambda: deploy(svc))
        step("worker", lambda: start_worker(svc))
        try:
            crashed = step("recover", lambda: crash_orphaned_runs(svc))
        except (OSError, ValueError) as exc:  # the service runs; the runs are looked at again on the next start
            crashed = []
            svc.say(f"  recover: could not look for flow runs whose process died ({exc}); `make serve` tries again")
        if crashed:
            svc.say(f"  {len(crashed)} flow run(s) whose process had died are now Crashed: {', '.join(crashed)}")
    except BaseException:
        for name in STOP_ORDER:
            if name not in before:
                _stop_one(svc, name)
        raise
    return steps
