"""The service's pid records read through psutil (issue 28 item 5) keep their format: the kernel's start time in clock
ticks, so a record an older `make serve` wrote still names its running process, and a zombie counts as exited."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil

from flows import service
from storage.home import SageHome


def _kernel_start(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_a_record_in_the_kernels_start_ticks_names_its_running_process_and_not_a_zombie(tmp_path):
    svc = service.Service(home=SageHome(tmp_path), say=lambda s: None)
    svc.dir.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert service._start_time(proc.pid) == _kernel_start(proc.pid)
        (svc.dir / "server.pid").write_text(json.dumps({"pid": proc.pid, "start": _kernel_start(proc.pid)}))
        assert service.recorded(svc, "server") == proc.pid
        proc.kill()
        deadline = time.monotonic() + 30
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service._start_time(proc.pid) is None  # exited, not reaped yet
        assert service.recorded(svc, "server") is None and not (svc.dir / "server.pid").exists()
    finally:
        proc.kill()
        proc.wait()


def test_postgres_starts_only_once_the_killed_postmaster_named_by_its_lock_file_is_reaped(tmp_path):
    """A killed postmaster is a zombie until its parent (init, after `make serve` exited) reaps it, and PostgreSQL
    refuses to start while postmaster.pid names a process that exists: `make serve` waits for the reaping (the
    restart of a killed PostgreSQL failed with "Is another postmaster (PID n) running" before)."""
    import threading

    from flows.service.postgres import await_reaped

    proc = subprocess.Popen(["sleep", "60"])
    proc.kill()
    deadline = time.monotonic() + 30
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "postmaster.pid").write_text(f"{proc.pid}\n{tmp_path}\n")
    reaper = threading.Timer(0.5, proc.wait)
    t0 = time.monotonic()
    reaper.start()
    await_reaped(tmp_path)
    waited = time.monotonic() - t0
    reaper.join()
    assert waited >= 0.4 and not psutil.pid_exists(proc.pid), waited

    live = subprocess.Popen(["sleep", "60"])  # a live process: PostgreSQL's own refusal, no wait
    try:
        (tmp_path / "postmaster.pid").write_text(f"{live.pid}\n")
        t0 = time.monotonic()
        await_reaped(tmp_path)
        assert time.monotonic() - t0 < 0.3
    finally:
        live.kill()
        live.wait()
    await_reaped(tmp_path / "nothing-here")  # no lock file: nothing to wait for
