"""The standing service (`make serve`, `sage serve`): PostgreSQL with its data under SAGE_HOME, the Prefect server on
it, the work pool, the deployments of prefect.yaml and one process worker, all on 127.0.0.1 with analytics off.

Each process runs in its own session, recorded (pid and kernel start time: a reused pid is never taken for it) in
SAGE_HOME/service/<name>.pid; `stop` ends them by those pids: worker (and its flow runs), server, PostgreSQL (as the
`postgres` user when we are root: it refuses root). Stdlib only at import. Process management, beside the CLI it serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from storage.home import SageHome

HOST = "127.0.0.1"
API_PORT = 4200
PG_PORT = 5433  # not 5432: a system cluster may hold that one
POOL = "sage-process"
DB_USER = "sage"
DB_NAME = "prefect"
STOP_ORDER = ("worker", "server", "postgres")
REPO = Path(__file__).resolve().parents[1]


class ServiceError(RuntimeError):
    """A step of the service that could not run; the message is one line that says what to do."""


@dataclass(frozen=True)
class Service:
    home: SageHome
    api_port: int = API_PORT
    pg_port: int = PG_PORT
    pool: str = POOL
    deployments: tuple[str, ...] = ()  # names for `prefect deploy -n`; none: every deployment (--all)
    worker_limit: int | None = 1  # one flow run at a time: the runs share this machine's cores (or its GPU)
    say: Callable[[str], None] = field(default=print, compare=False)

    @property
    def dir(self) -> Path:
        return self.home.service_dir()

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def inbox(self) -> Path:
        return self.home.inbox()

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def env(self) -> dict[str, str]:
        """What every Prefect process of the service runs with: its own PREFECT_HOME (no user profile leaks in), this
        server's API, analytics off, and SAGE_HOME / SAGE_REPO for prefect.yaml's templates and the flows."""
        env = dict(os.environ)
        env.update(PREFECT_HOME=str(self.dir / "prefect"), PREFECT_API_URL=self.api_url, PREFECT_CLI_PROMPT="false",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", SAGE_HOME=str(self.home.root),
                   SAGE_REPO=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")  # errors still reach server.log, access lines not
        return env


# ---- processes, by recorded pid -------------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), or None when no such process is alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has exited already


def _record(svc: Service, name: str, pid: int) -> None:
    (svc.dir / f"{name}.pid").write_text(json.dumps({"pid": pid, "start": _start_time(pid)}) + "\n")


def recorded(svc: Service, name: str) -> int | None:
    """The pid recorded for `name` if that very process still runs; a stale record (exited, pid reused) is removed."""
    path = svc.dir / f"{name}.pid"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("start") is not None and _start_time(int(rec["pid"])) == rec["start"]:
        return int(rec["pid"])
    path.unlink(missing_ok=True)
    return None


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the worker's flow runs start in sessions of their own)."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], starts: dict[int, str | None], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _start_time(p) is not None and _start_time(p) == starts[p]]
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


def _check_port(port: int, what: str, variable: str) -> None:
    with socket.socket() as s:
        taken = s.connect_ex((HOST, port)) == 0
    if taken:
        raise ServiceError(f"port {port} on {HOST} is taken ({what}): stop what holds it (`make serve-stop` if it "
                           f"is this service) or pick another with {variable}=N")


# ---- PostgreSQL -----------------------------------------------------------------------------------------------------

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
            closed = next((p for p in reversed(data.parents) if not p.stat().st_mode & 0o001), data.parent)
            raise ServiceError(f"the postgres user cannot reach {data}: {closed} is closed to other users; put "
                               f"SAGE_HOME elsewhere or open it (chmod o+x {closed})")
    secret = svc.dir / "postgres.secret"
    _write_private(secret, secrets.token_urlsafe(24))
    pwfile = svc.dir / ".pwfile"  # not in data/: initdb wants that empty
    _write_private(pwfile, secret.read_text())
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
    _spawn(svc, "postgres", [str(bindir / "postgres"), "-D", str(data), "-p", str(svc.pg_port),
                             "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="], cwd=data,
           **_pg_user())
    ready = [str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(svc.pg_port)]
    _await(svc, "postgres", lambda: subprocess.run(ready).returncode == 0, 60)
    _create_db(svc)
    return url


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


# ---- Prefect --------------------------------------------------------------------------------------------------------

def prefect_cli() -> str:
    """The `prefect` command of this environment (the service's processes run in it)."""
    return str(Path(sys.executable).parent / "prefect")


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def start_server(svc: Service, db_url: str) -> None:
    if recorded(svc, "server") is not None:
        return
    _check_port(svc.api_port, "the Prefect server", "PREFECT_PORT")
    env = svc.env() | {"PREFECT_API_DATABASE_CONNECTION_URL": db_url}
    _spawn(svc, "server", [prefect_cli(), "server", "start", "--host", HOST, "--port", str(svc.api_port),
                           "--analytics-off"], env=env)
    _await(svc, "server", lambda: _get(f"{svc.api_url}/health") == 200, 180)


def _cli(svc: Service, args: list[str], what: str) -> None:
    out = subprocess.run([prefect_cli(), *args], capture_output=True, text=True, env=svc.env(), cwd=REPO)
    with open(svc.log("setup"), "a") as log:
        log.write(f"$ prefect {' '.join(args)}\n{out.stdout}{out.stderr}\n")
    if out.returncode != 0:
        raise ServiceError(f"{what} failed: {_last_line(out.stdout + out.stderr)} (full output: {svc.log('setup')})")


def create_pool(svc: Service) -> None:
    if _get(f"{svc.api_url}/work_pools/{svc.pool}") != 200:
        _cli(svc, ["work-pool", "create", svc.pool, "--type", "process"], f"creating work pool {svc.pool}")


def deploy(svc: Service) -> None:
    names = [a for n in svc.deployments for a in ("-n", n)] or ["--all"]
    _cli(svc, ["deploy", *names, "--pool", svc.pool, "--no-prompt"], "prefect deploy")


def start_worker(svc: Service) -> None:
    if recorded(svc, "worker") is not None:
        return
    limit = ["--limit", str(svc.worker_limit)] if svc.worker_limit else []
    _spawn(svc, "worker", [prefect_cli(), "worker", "start", "--pool", svc.pool, "--type", "process", "--name",
                           f"sage-{socket.gethostname()}", "--install-policy", "never", *limit], env=svc.env())
    _await(svc, "worker", lambda: _worker_online(svc), 120)


def _worker_online(svc: Service) -> bool:
    req = urllib.request.Request(f"{svc.api_url}/work_pools/{svc.pool}/workers/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return any(w.get("status") == "ONLINE" for w in json.load(r))
    except (OSError, ValueError):
        return False


def _write_private(path: Path, text: str) -> None:  # readable by its owner only, never for an instant by others
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def start(svc: Service) -> dict[str, float]:
    """Start whatever of the service is not running (a second `make serve` reuses what runs and deploys again);
    returns each step's seconds. A step that fails stops what this call started and says what to do."""
    svc.home.ensure_writable()
    svc.dir.mkdir(mode=0o711, parents=True, exist_ok=True)  # postgres may pass through to its data, not list it
    svc.inbox.mkdir(exist_ok=True)  # the nightly run's default source: present from the start, not a source error
    before = {n for n, pid in status(svc).items() if pid is not None}
    steps: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        svc.say(f"  {name} ...")
        value = fn()
        steps[name] = time.perf_counter() - t0
        svc.say(f"  {name}: {steps[name]:.1f} s")
        return value

    try:
        db_url = step("postgres", lambda: start_postgres(svc))
        step("server", lambda: start_server(svc, str(db_url)))
        step("work-pool", lambda: create_pool(svc))
        step("deploy", lambda: deploy(svc))
        step("worker", lambda: start_worker(svc))
    except BaseException:
        for name in STOP_ORDER:
            if name not in before:
                _stop_one(svc, name)
        raise
    return steps
