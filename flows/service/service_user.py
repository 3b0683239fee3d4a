"""When root starts the service, its worker (and so every flow run) runs as an unprivileged service user, the way
PostgreSQL runs as `postgres`: `sage` (a system user without home or login shell, created when missing) or the user
named by SAGE_SERVICE_USER. That user owns the data root the flow runs write (SAGE_HOME but service/) and its own
HOME under service/; the service's secrets and the profile root's Prefect processes read stay root's, 0600. It gets
the API's password in its environment only, which other users cannot read. Not root: the worker runs as us."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil

from flows.service.config import REPO, SERVICE_USER_ENV, Service, ServiceError
from flows.service.files import closed_dir
from flows.service.processes import _last_line, _stop_one, recorded

USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_OTHERS = f"set {SERVICE_USER_ENV} to an unprivileged user, or run `make serve` as an ordinary user"


def service_account(svc: Service) -> pwd.struct_passwd | None:
    """The user the worker runs as: None when we are not root (ourselves); as root, the service user, created as a
    system user when missing. Never root or root's group."""
    if os.geteuid() != 0:
        return None
    name = svc.service_user
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        if not USER_NAME.fullmatch(name):
            raise ServiceError(f"{SERVICE_USER_ENV}={name!r} is not a user name; {_OTHERS}") from None
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        try:
            out = subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                                  "/usr/sbin/nologin", name], capture_output=True, text=True)
            why = _last_line(out.stdout + out.stderr) if out.returncode else ""
        except OSError as exc:
            why = str(exc)
        if why:
            raise ServiceError(f"could not create the service user {name} ({why}): create it (useradd --system "
                               f"{name}) or {_OTHERS}") from None
        pw = pwd.getpwnam(name)
        svc.say(f"  created the system user {name}: the worker and its flow runs run as it")
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise ServiceError(f"the service user {name} is root or in root's group: the worker must not run with root's "
                           f"rights; {_OTHERS}")
    return pw


def as_user(pw: pwd.struct_passwd) -> dict:
    """subprocess keywords that run a command as `pw` with its group only."""
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def worker_env(svc: Service, pw: pwd.struct_passwd) -> dict[str, str]:
    """The service's environment with the service user's own HOME and PREFECT_HOME (root's are closed to it, and a
    Prefect profile it could write must never be one root's processes read)."""
    env = svc.env()
    for name in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        env.pop(name, None)  # root's
    return env | {"HOME": str(svc.worker_home), "USER": pw.pw_name, "LOGNAME": pw.pw_name,
                  "PREFECT_HOME": str(svc.worker_home / "prefect")}


def stop_a_worker_of_another_user(svc: Service, pw: pwd.struct_passwd) -> bool:
    """A worker an older `make serve` started as root (or as another user) is stopped, so this start runs it as the
    service user; True if one was."""
    pid = recorded(svc, "worker")
    try:
        uid = None if pid is None else psutil.Process(pid).uids().real
    except psutil.Error:
        return False
    if uid is None or uid == pw.pw_uid:
        return False
    svc.say(f"  the worker (pid {pid}) runs as uid {uid}, not as the service user {pw.pw_name}: restarting it")
    return _stop_one(svc, "worker")


def check_runnable(svc: Service, pw: pwd.struct_passwd, python: str = sys.executable) -> None:
    """The service user can run this environment's Python, import Prefect in the repository and enter the data root;
    else a one-line ServiceError that names the directory closed to it."""
    probe = f"import os, sys, prefect; sys.exit(0 if os.access({str(svc.home.root)!r}, os.X_OK) else 3)"
    try:
        out = subprocess.run([python, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env=worker_env(svc, pw), **as_user(pw))
        code, why = out.returncode, _last_line(out.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:  # PermissionError: it cannot execute it or enter REPO
        code, why = -1, str(exc)
    if code == 0:
        return
    if code == 3:
        closed = closed_dir(svc.home.root.parent) or svc.home.root.parent
        raise ServiceError(f"the service user {pw.pw_name} cannot reach the data root {svc.home.root}: {closed} is "
                           f"closed to other users; put SAGE_HOME elsewhere or open it (chmod o+x {closed})")
    paths = (Path(python), Path(python).resolve(), Path(sys.prefix), Path(sys.base_prefix), REPO)
    closed = next((c for p in paths if (c := closed_dir(p)) is not None), None)
    where = (f"{closed} is closed to other users; open it (chmod o+x {closed}) or install SAGE with a Python outside "
             f"it" if closed else "make the environment and the repository readable by other users")
    raise ServiceError(f"the service user {pw.pw_name} cannot run {python} ({why}): {where}, or {_OTHERS}")


def hand_over(svc: Service, pw: pwd.struct_passwd) -> int:
    """Give the service user what its flow runs write: the data root (all of SAGE_HOME but service/) and its HOME under
    service/. Walks by directory descriptor and never follows a symlink, nor chowns a file with another hard link, so
    nothing the service user planted there hands it a file outside. Returns how many entries changed owner."""
    svc.worker_home.mkdir(mode=0o700, exist_ok=True)
    changed = 0
    for top, dirs, files, dirfd in os.fwalk(svc.home.root, follow_symlinks=False):
        if Path(top) == svc.home.root and svc.dir.name in dirs:
            dirs.remove(svc.dir.name)  # root's: secrets, PostgreSQL's data (its user's), pid files, logs
            changed += _give_and_close(os.open(svc.worker_home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW), pw)
        changed += _give(dirfd, pw)
        for name in files:
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                    continue  # a symlink (its target is not ours to give), a fifo, a socket
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
            except OSError:
                continue  # gone meanwhile, or replaced by a symlink
            changed += _give_and_close(fd, pw)
    return changed


def _give(fd: int, pw: pwd.struct_passwd) -> int:
    """fchown `fd` (a regular file with no other hard link, or a directory) to `pw` unless it is its already."""
    st = os.fstat(fd)
    if st.st_uid == pw.pw_uid or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        return 0
    os.fchown(fd, pw.pw_uid, pw.pw_gid)
    return 1


def _give_and_close(fd: int, pw: pwd.struct_passwd) -> int:
    """_give, then close the descriptor we opened."""
    try:
        return _give(fd, pw)
    finally:
        os.close(fd)
