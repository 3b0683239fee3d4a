"""Each part of the service as `make serve-status` shows it: up, dead, not answering, alive or stopped."""

from __future__ import annotations

from dataclasses import dataclass

from flows.service.config import HOST, Service
from flows.service.processes import _port_open, _recorded_pid, is_alive
from flows.service.rest import _get
from flows.service.worker import _worker_online


@dataclass(frozen=True)
class Health:
    """One part of the service as `make serve-status` shows it."""
    name: str
    state: str  # "up"; "dead" (it was started and its process is gone); "not answering" (it runs, its port does not
    #             answer); "alive" (the worker runs, its heartbeat unread: a part above is down); "stopped" (never
    #             started, or stopped by `make serve-stop`)
    pid: int | None
    where: str  # its URL or port
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "up"

    def line(self) -> str:
        pid = f"pid {self.pid}" if self.pid else ""
        return f"{self.name:<9} {self.state:<14} {pid:<11} {self.where}{'  (' + self.note + ')' if self.note else ''}"


def health(svc: Service) -> list[Health]:
    """Each part's state, read-only: a part whose process died keeps its record (so it shows as dead) until `start`
    restarts it."""
    out = []
    for name in ("postgres", "server", "worker"):
        last = _recorded_pid(svc, name)
        where = {"postgres": f"{HOST}:{svc.pg_port}", "server": f"{svc.ui_url} (API {svc.api_url})",
                 "worker": f"pool {svc.pool}"}[name]
        if not is_alive(svc, name):
            state = "dead" if last is not None else "stopped"
            note = f"pid {last} exited; see {svc.log(name)}; `make serve` restarts it" if last is not None else ""
            out.append(Health(name, state, None, where, note))
            continue
        if name == "postgres":
            answers = _port_open(svc.pg_port)
        elif name == "server":
            answers = _get(f"{svc.api_url}/health") == 200
        elif not all(h.ok for h in out):  # its heartbeat is read through the server and PostgreSQL
            out.append(Health(name, "alive", last, where, "its heartbeat cannot be read while the parts above are "
                                                         "not up"))
            continue
        else:
            answers = _worker_online(svc)
        out.append(Health(name, "up" if answers else "not answering", last, where,
                          "" if answers else f"see {svc.log(name)}; `make serve-stop` then `make serve` restarts it"))
    return out
