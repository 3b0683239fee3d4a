"""The process worker of the service's pool (as the service user when root started it), and the flow runs it left
behind: a run whose process died under it (PostgreSQL or the worker killed) is set Crashed, not left Running."""

from __future__ import annotations

import socket

from flows.service.config import REPO, Service
from flows.service.processes import _await, _spawn, _start_time, recorded
from flows.service.rest import api
from flows.service.server import prefect_cli
from flows.service.service_user import as_user, service_account, worker_env

ACTIVE_STATES = ("PENDING", "RUNNING", "CANCELLING")


def start_worker(svc: Service) -> None:
    if recorded(svc, "worker") is not None:
        return
    pw = service_account(svc)
    limit = ["--limit", str(svc.worker_limit)] if svc.worker_limit else []
    _spawn(svc, "worker", [prefect_cli(), "worker", "start", "--pool", svc.pool, "--type", "process", "--name",
                           f"sage-{socket.gethostname()}", "--install-policy", "never", *limit],
           env=svc.env() if pw is None else worker_env(svc, pw), **({} if pw is None else {"cwd": REPO, **as_user(pw)}))
    _await(svc, "worker", lambda: _worker_online(svc), 120)


def _worker_online(svc: Service) -> bool:
    try:
        return any(w.get("status") == "ONLINE" for w in api(svc, f"/work_pools/{svc.pool}/workers/filter", {},
                                                             timeout=2))
    except (OSError, ValueError):
        return False


def crash_orphaned_runs(svc: Service) -> list[str]:
    """Flow runs of this pool that Prefect still shows as pending or running although their process (the worker's
    child, its pid recorded as the run's infrastructure_pid) has died, e.g. with PostgreSQL or the worker killed
    under them: set Crashed, so `prefect deployment run --watch` and the UI see the end. Returns their names."""
    runs = api(svc, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": list(ACTIVE_STATES)}}},
                                          "work_pools": {"name": {"any_": [svc.pool]}}})
    crashed = []
    for run in runs:
        pid = str(run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
        if not pid.isdigit() or _start_time(int(pid)) is not None:
            continue  # not started by a worker yet, or still running
        api(svc, f"/flow_runs/{run['id']}/set_state",
            {"state": {"type": "CRASHED", "name": "Crashed",
                       "message": f"its process (pid {pid}) died while the run was {run['state_type'].lower()} "
                                  "(found by `make serve`)"}, "force": True})
        crashed.append(run["name"])
    return crashed
