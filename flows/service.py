"""The standing service (`make serve`, `sage serve`): PostgreSQL with its data under SAGE_HOME, the Prefect server on
it, the work pool, the deployments of prefect.yaml and one process worker, all on 127.0.0.1 with analytics off.

Nobody but the service's owner runs code through it: the Prefect API asks for a password (Prefect's server API
authentication; the secret in SAGE_HOME/service/api.secret, 0600, and in the service's own Prefect profile, 0600); the
work pool's base job template takes no job variable that changes what a flow run runs (no environment, command or
working directory from a deployment or a flow run: the worker's own environment is the flow run's); and whether `py:`
SAE specs may run code is the worker's own setting (`--allow-py-specs`), never a flow run's.

Each process runs in its own session, recorded (pid and kernel start time: a reused pid is never taken for it) in
SAGE_HOME/service/<name>.pid; `stop` ends them by those pids: worker (and its flow runs), server, PostgreSQL (as the
`postgres` user when we are root: it refuses root). Stdlib only at import. Process management, beside the CLI it serves.
"""

from __future__ import annotations

import base64
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
API_USER = "sage"
PY_SPECS_ENV = "SAGE_ALLOW_PY_SPECS"  # storage.py_specs.PY_SPECS_ENV (not imported: this module is stdlib only)
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
    allow_py_specs: bool = False  # the worker's own setting: may `py:` SAE specs import and run code in its flow runs
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

    @property
    def prefect_home(self) -> Path:
        return self.dir / "prefect"

    @property
    def secret_path(self) -> Path:
        """The API's password (`user:password`, Prefect's server API auth string): readable by the owner only."""
        return self.dir / "api.secret"

    def auth(self) -> str | None:
        """The API's auth string, None before the first `start` made it."""
        try:
            return self.secret_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def env(self) -> dict[str, str]:
        """What every Prefect process of the service runs with: its own PREFECT_HOME (no user profile leaks in), this
        server's API and its password, analytics off, the UI's build under SAGE_HOME (not in the installed package),
        SAGE_HOME / SAGE_REPO for prefect.yaml's templates and the flows, and `py:` specs allowed only where the
        service was started with allow_py_specs (an exported SAGE_ALLOW_PY_SPECS does not reach the worker)."""
        env = dict(os.environ)
        env.update(PREFECT_HOME=str(self.prefect_home), PREFECT_API_URL=self.api_url, PREFECT_CLI_PROMPT="false",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", SAGE_HOME=str(self.home.root),
                   SAGE_REPO=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   PREFECT_SERVER_UI_STATIC_DIRECTORY=str(self.dir / "ui"), TQDM_DISABLE="1")
        for name in ("PREFECT_UI_STATIC_DIRECTORY", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING",
                     "PREFECT_API_KEY", PY_SPECS_ENV):
            env.pop(name, None)
        if self.allow_py_specs:
            env[PY_SPECS_ENV] = "1"
        if (auth := self.auth()) is not None:
            env["PREFECT_API_AUTH_STRING"] = auth
        env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")  # errors still reach server.log, access lines not
        # a task run's INFO lines (state changes, progress hooks) are most of a run's log and say nothing: the flow's
        # own lines carry its stages and results, the progress artifacts its progress
        env.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
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


def _recorded_pid(svc: Service, name: str) -> int | None:
    """The pid in `name`'s record, alive or not (the record is left where it is)."""
    try:
        return int(json.loads((svc.dir / f"{name}.pid").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((HOST, port)) == 0


def health(svc: Service) -> list[Health]:
    """Each part's state, read-only: a part whose process died keeps its record (so it shows as dead) until `start`
    restarts it."""
    out = []
    for name in ("postgres", "server", "worker"):
        last = _recorded_pid(svc, name)
        path = svc.dir / f"{name}.pid"
        try:
            rec = json.loads(path.read_text())
            alive = rec.get("start") is not None and _start_time(int(rec["pid"])) == rec["start"]
        except (OSError, ValueError, KeyError, TypeError):
            alive = False
        where = {"postgres": f"{HOST}:{svc.pg_port}", "server": f"{svc.ui_url} (API {svc.api_url})",
                 "worker": f"pool {svc.pool}"}[name]
        if not alive:
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


def _headers(auth: str | None) -> dict[str, str]:
    """Prefect's server API authentication: HTTP Basic with the auth string `user:password`."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return headers


def api(svc: Service, path: str, body: object = None, method: str | None = None, timeout: float = 10):
    """The service's REST API as its owner (with the password): the JSON answer; HTTPError as urllib raises it."""
    req = urllib.request.Request(f"{svc.api_url}{path}", data=None if body is None else json.dumps(body).encode(),
                                 method=method or ("GET" if body is None else "POST"), headers=_headers(svc.auth()))
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return json.loads(data) if data else None


def _get(url: str, auth: str | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_headers(auth)), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def ensure_auth(svc: Service) -> str:
    """The API's password, made once (0600, like the database's), and the service's Prefect profile (0600) that gives
    any Prefect client run with PREFECT_HOME=SAGE_HOME/service/prefect this API and its password."""
    auth = svc.auth()
    if auth is None:
        auth = f"{API_USER}:{secrets.token_urlsafe(32)}"
        _write_private(svc.secret_path, auth + "\n")
    os.chmod(svc.secret_path, 0o600)
    svc.prefect_home.mkdir(mode=0o700, exist_ok=True)
    os.chmod(svc.prefect_home, 0o700)
    _write_private(svc.prefect_home / "profiles.toml",
                   f'active = "sage-service"\n\n[profiles.sage-service]\nPREFECT_API_URL = {json.dumps(svc.api_url)}\n'
                   f"PREFECT_API_AUTH_STRING = {json.dumps(auth)}\n")
    return auth


def start_server(svc: Service, db_url: str) -> None:
    if recorded(svc, "server") is not None:
        if _get(f"{svc.api_url}/work_pools/{svc.pool}") != 401:  # one an older `make serve` started without a password
            svc.say("  the running server answers without the API password: restarting it with one")
            _stop_one(svc, "server")
        else:
            return
    _check_port(svc.api_port, "the Prefect server", "PREFECT_PORT")
    env = svc.env() | {"PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                       "PREFECT_SERVER_API_AUTH_STRING": svc.auth() or ensure_auth(svc)}
    _spawn(svc, "server", [prefect_cli(), "server", "start", "--host", HOST, "--port", str(svc.api_port),
                           "--analytics-off"], env=env)
    _await(svc, "server", lambda: _get(f"{svc.api_url}/health") == 200, 180)


def _cli(svc: Service, args: list[str], what: str) -> None:
    out = subprocess.run([prefect_cli(), *args], capture_output=True, text=True, env=svc.env(), cwd=REPO)
    with open(svc.log("setup"), "a") as log:
        log.write(f"$ prefect {' '.join(args)}\n{out.stdout}{out.stderr}\n")
    if out.returncode != 0:
        raise ServiceError(f"{what} failed: {_last_line(out.stdout + out.stderr)} (full output: {svc.log('setup')})")


def pool_template(svc: Service) -> dict:
    """The work pool's base job template. Its job configuration names no variable: a flow run's process gets the
    worker's environment, Prefect's default command and a fresh working directory whatever job variables a deployment
    or a flow run carries (a flow run created through POST /flow_runs/ skips the server's check below, so the worker
    must not read them). Its variables schema takes only what prefect.yaml's deployments set, at the values this
    service already runs with (SAGE_HOME, TQDM_DISABLE), so the server refuses any other job variable (422)."""
    pinned = {"SAGE_HOME": str(svc.home.root), "TQDM_DISABLE": "1"}
    env = {"title": "Environment Variables", "type": "object", "additionalProperties": False,
           "description": "Fixed by the service: " + ", ".join(f"{k}={v}" for k, v in pinned.items()),
           "properties": {k: {"type": "string", "enum": [v]} for k, v in pinned.items()}}
    return {"job_configuration": {"stream_output": True},
            "variables": {"type": "object", "additionalProperties": False, "properties": {"env": env}}}


def create_pool(svc: Service) -> None:
    """Create the pool, or give an existing one (an older `make serve`'s, with Prefect's default template) this
    service's template."""
    template = svc.dir / "pool-template.json"
    template.write_text(json.dumps(pool_template(svc), indent=1) + "\n")
    _cli(svc, ["work-pool", "create", svc.pool, "--type", "process", "--base-job-template", str(template),
               "--overwrite"], f"creating work pool {svc.pool}")


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
    try:
        return any(w.get("status") == "ONLINE" for w in api(svc, f"/work_pools/{svc.pool}/workers/filter", {},
                                                             timeout=2))
    except (OSError, ValueError):
        return False


ACTIVE_STATES = ("PENDING", "RUNNING", "CANCELLING")


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
    ensure_auth(svc)
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
