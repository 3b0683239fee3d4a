"""PostgreSQL, Prefect's database here: its data under SAGE_HOME/service/postgres, on 127.0.0.1 only (no unix socket),
as the `postgres` user when we are root (it refuses root)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from flows.service.config import DB_NAME, DB_USER, HOST, Service, ServiceError
from flows.service.files import closed_dir, write_private
from flows.service.processes import _await, _check_port, _last_line, _spawn, recorded


def pg_bin() -> Path:
    """The PostgreSQL server programs: SAGE_PG_BIN, else the newest Debian install, else `postgres` on PATH."""
    given = os.environ.get("SAGE_PG_BIN")
    found = [Path(given)] if given else sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                               key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    on_path = shutil.which("postgres")
    candidates = [*reversed(found), *([Path(on_path).parent] if on_path and not given else [])]
    for d in candidates:
        if (d / "postgres").is_file() and (d / "initdb").is_file():
            return d
    raise ServiceError("PostgreSQL not found: `make serve` installs it (apt-get install postgresql); or set "
                       "SAGE_PG_BIN to the directory holding its `postgres` and `initdb`")


def _pg_user() -> dict:
    """As root, run as `postgres` (the server refuses root); otherwise as ourselves."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root, PostgreSQL needs the `postgres` system user: install the postgresql "
                           "package (it creates it) or run `make serve` as another user") from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _as_pg(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **_pg_user(), **kw)


def _init_postgres(svc: Service, data: Path, bindir: Path) -> None:
    """initdb once: user `sage` with a random password (kept in service/, readable by us only), password logins over
    TCP, none over a socket."""
    as_user = _pg_user()
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if as_user:
        os.chown(data, as_user["user"], as_user["group"])
        if _as_pg(["test", "-w", str(data)]).returncode != 0:
            closed = closed_dir(data.parent) or data.parent
            raise ServiceError(f"the postgres user cannot reach {data}: {closed} is closed to other users; put "
                               f"SAGE_HOME elsewhere or open it (chmod o+x {closed})")
    secret = svc.dir / "postgres.secret"
    write_private(secret, secrets.token_urlsafe(24))
    pwfile = svc.dir / ".pwfile"  # not in data/: initdb wants that empty
    write_private(pwfile, secret.read_text())
    if as_user:
        os.chown(pwfile, as_user["user"], as_user["group"])
    try:
        out = _as_pg([str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=reject", "-E", "UTF8", "--no-instructions"],
                     cwd=data)
    finally:
        pwfile.unlink(missing_ok=True)
    if out.returncode != 0:
        raise ServiceError(f"initdb failed: {_last_line(out.stdout + out.stderr)}")


def start_postgres(svc: Service) -> str:
    """PostgreSQL on 127.0.0.1:pg_port (no unix socket), its data in SAGE_HOME/service/postgres; returns Prefect's
    connection URL."""
    bindir, data = pg_bin(), svc.dir / "postgres"
    if not (data / "PG_VERSION").exists():
        _init_postgres(svc, data, bindir)
    url = (f"postgresql+asyncpg://{DB_USER}:{(svc.dir / 'postgres.secret').read_text().strip()}@{HOST}:"
           f"{svc.pg_port}/{DB_NAME}")
    if recorded(svc, "postgres") is not None:
        return url
    _check_port(svc.pg_port, "PostgreSQL", "PG_PORT")
    await_reaped(data)
    _spawn(svc, "postgres", [str(bindir / "postgres"), "-D", str(data), "-p", str(svc.pg_port),
                             "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="], cwd=data,
           **_pg_user())
    ready = [str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(svc.pg_port)]
    _await(svc, "postgres", lambda: subprocess.run(ready).returncode == 0, 60)
    _create_db(svc)
    return url


def await_reaped(data: Path, timeout: float = 20) -> None:
    """A postmaster that died (SIGKILL) stays a zombie until its parent reaps it: `make serve` started it and exited,
    so that is init, which in a container may take seconds. PostgreSQL refuses to start while its lock file names a
    process that exists, zombie or not: wait for that one to be gone. A live postmaster is left to PostgreSQL's own
    refusal."""
    import psutil

    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)


def _create_db(svc: Service) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(user=DB_USER, password=(svc.dir / "postgres.secret").read_text().strip(),
                                     host=HOST, port=svc.pg_port, database="postgres")
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME):
                await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await conn.close()

    asyncio.run(create())
