"""What this host says about the processes that hold watch runs' claims: who this host is (`host_identity`), when a
process of a pid started (`process_started`, from /proc), this process as a holder, and which holders among a ledger's
claims have ended (the facts read here, the rule in `sage_core.watch.claims`)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable

from sage_core.watch import claims
from sage_core.watch.plan import Holder, SeenRow


def _text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def host_identity() -> str:
    """`<hostname>/<machine>/<pid namespace>`: where a pid names one process. The machine is /etc/machine-id (it
    survives a reboot; else the boot id, so a reboot makes another host); the pid namespace tells apart containers of
    one machine, whose pids do not name each other's processes."""
    machine = _text("/etc/machine-id")
    if not machine:
        boot = _text("/proc/sys/kernel/random/boot_id")
        machine = f"boot-{boot}" if boot else ""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{machine}/{ns}"


class CannotTell(Exception):
    """This host cannot say whether a process runs (no /proc, no psutil, /proc unreadable)."""


def process_started(pid: int) -> str | None:
    """When process `pid` of this host started, as the host counts it: `<boot id>:<clock tick>` on Linux (exact; a
    later process reusing the pid started at another tick, a reboot changes the boot id), psutil's start time
    elsewhere. None when no such process runs, a zombie (killed, not yet reaped by its parent) included. CannotTell
    where this host cannot say."""
    if pid <= 0:
        return None
    if os.path.isdir("/proc/self"):
        try:
            if os.readlink("/proc/self") != str(os.getpid()):  # a /proc of another pid namespace: its pids are not ours
                raise CannotTell
        except OSError as e:
            raise CannotTell from e
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError as e:
            raise CannotTell from e
        fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and ')'
        if len(fields) < 20:
            raise CannotTell
        if fields[0] in ("Z", "X", "x"):  # a zombie or a dead task: it has stopped running
            return None
        boot = _text("/proc/sys/kernel/random/boot_id")
        return f"{boot}:{fields[19]}"  # field 22 of /proc/<pid>/stat: the start time in clock ticks after boot
    try:
        import psutil
    except ImportError as e:
        raise CannotTell from e
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{proc.create_time():.6f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as e:
        raise CannotTell from e


def this_holder() -> Holder | None:
    """This process as the holder of the claims it makes; None where this host cannot tell when a process started
    (its claims then wait for their lease)."""
    try:
        started = process_started(os.getpid())
    except CannotTell:
        return None
    return Holder(host=host_identity(), pid=os.getpid(), started=started) if started else None


def running(pids: Iterable[int]) -> dict[int, str | None]:
    """pid -> when the process that has it on this host started (None: none runs), for each pid this host can check
    (the others are left out: not known to have ended)."""
    out: dict[int, str | None] = {}
    for pid in pids:
        with contextlib.suppress(CannotTell):
            out[pid] = process_started(pid)
    return out


def gone_holders(seen: Iterable[SeenRow], owner: str) -> frozenset[Holder]:
    """The holders of other runs' claims among `seen` that are known to have ended (on this host)."""
    here, holders = host_identity(), claims.others_holders(seen, owner)
    return claims.gone(holders, here, running(claims.to_check(holders, here)))
