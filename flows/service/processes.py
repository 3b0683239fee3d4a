"""The service's processes, by recorded pid: each runs in its own session, recorded (pid and start time, so a reused pid
is never taken for it) in SAGE_HOME/service/<name>.pid; psutil reads the process table."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import psutil

from flows.service.config import HOST, STOP_ORDER, Service, ServiceError

_TICKS = os.sysconf("SC_CLK_TCK")


def _start_time(pid: int) -> str | None:
    """When `pid` started, in clock ticks after boot (the kernel's field 22 of /proc/PID/stat, as the pid records
    hold it), or None when no such process is alive (a zombie has exited). psutil's create_time is the boot time
    plus it: the difference stays put when the clock is set."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return str(round((proc.create_time() - psutil.boot_time()) * _TICKS))
    except psutil.Error:
        return None


def _record(svc: Service, name: str, pid: int) -> None:
    (svc.dir / f"{name}.pid").write_text(json.dumps({"pid": pid, "start": _start_time(pid)}) + "\n")


def _read_record(svc: Service, name: str) -> dict | None:
    try:
        rec = json.loads((svc.dir / f"{name}.pid").read_text())
        int(rec["pid"])
        return rec
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _same(rec: dict) -> bool:
    return rec.get("start") is not None and _start_time(int(rec["pid"])) == rec["start"]


def is_alive(svc: Service, name: str) -> bool:
    """The process recorded for `name` still runs (read-only: the record stays)."""
    rec = _read_record(svc, name)
    return rec is not None and _same(rec)


def recorded(svc: Service, name: str) -> int | None:
    """The pid recorded for `name` if that very process still runs; a stale record (exited, pid reused) is removed."""
    rec = _read_record(svc, name)
    if rec is None:
        return None
    if _same(rec):
        return int(rec["pid"])
    (svc.dir / f"{name}.pid").unlink(missing_ok=True)
    return None


def _recorded_pid(svc: Service, name: str) -> int | None:
    """The pid in `name`'s record, alive or not (the record is left where it is)."""
    rec = _read_record(svc, name)
    return None if rec is None else int(rec["pid"])


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the worker's flow runs start in sessions of their own)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], starts: dict[int, str | None], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if (t := _start_time(p)) is not None and t == starts[p]]
    return alive


def _stop_one(svc: Service, name: str) -> bool:
    """End `name` (and what it started) by its recorded pid: a polite signal, then SIGKILL after a grace period."""
    pid = recorded(svc, name)
    if pid is None:
        return False
    pids = [pid, *(_descendants(pid) if name == "worker" else [])]  # postgres ends its own backends
    starts = {p: _start_time(p) for p in pids}
    # postgres: SIGINT is its "fast" shutdown (ends sessions, checkpoints); Prefect's processes take SIGTERM
    _signal(pids, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    alive = _wait_gone(pids, starts, 30)
    if alive:
        svc.say(f"  {name}: still running after 30 s, killing {alive}")
        _signal(alive, signal.SIGKILL)
        _wait_gone(alive, starts, 10)
    (svc.dir / f"{name}.pid").unlink(missing_ok=True)
    svc.say(f"  stopped {name} (pid {pid})")
    return True


def stop(svc: Service) -> list[str]:
    """Stop the worker, the server and PostgreSQL, in that order, by their recorded pids; running it again (or with
    nothing running) stops nothing and is no error."""
    return [name for name in STOP_ORDER if _stop_one(svc, name)]


def status(svc: Service) -> dict[str, int | None]:
    return {name: recorded(svc, name) for name in STOP_ORDER}


def _spawn(svc: Service, name: str, cmd: list[str], env: dict[str, str] | None = None, **kw) -> int:
    with open(svc.log(name), "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, **kw)  # its own session: a Ctrl-C of `make serve` spares it
    _record(svc, name, proc.pid)
    return proc.pid


def _await(svc: Service, name: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if recorded(svc, name) is None:
            raise ServiceError(f"{name} exited while starting: {_last_line(svc.log(name).read_text(errors='replace'))} "
                               f"(log: {svc.log(name)})")
        if time.monotonic() > deadline:
            raise ServiceError(f"{name} not ready after {timeout:.0f} s; see {svc.log(name)}, then `make serve-stop`")
        time.sleep(0.25)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((HOST, port)) == 0


def _check_port(port: int, what: str, variable: str) -> None:
    with socket.socket() as s:
        taken = s.connect_ex((HOST, port)) == 0
    if taken:
        raise ServiceError(f"port {port} on {HOST} is taken ({what}): stop what holds it (`make serve-stop` if it "
                           f"is this service) or pick another with {variable}=N")
