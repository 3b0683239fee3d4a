"""The standing service (issue 18, items 5-6): `make serve` starts PostgreSQL, the Prefect server on it, the work pool,
every deployment of prefect.yaml and one process worker on 127.0.0.1; a run of `watch-nightly` evaluates an SAE
dropped into a watched folder, the next run evaluates nothing; `make serve-stop` ends every process by its pid.

The service gets its own SAGE_HOME, ports and PREFECT_HOME (and every Prefect setting of this session dropped from its
environment), so it never meets the session's `prefect_harness` server the other tests use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from flows import service
from flows.quiet import quiet_prefect
from storage.home import SageHome
from tests.as_user import as_user

pytestmark = [pytest.mark.acceptance]

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, start: str | None) -> bool:
    """That very process (same kernel start time, as the pid records hold it) runs and is no zombie."""
    return start is not None and service._start_time(pid) == start


@pytest.fixture
def home():
    """A SAGE_HOME the `postgres` user may enter (pytest's tmp_path sits in a directory closed to other users)."""
    d = Path(tempfile.mkdtemp(prefix="sage-serve-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def runnable_by_service_user():
    """As root the worker runs as the service user, which must be able to run this environment's Python: a directory
    on its way that is closed to other users (root's home, holding pyenv's Python, on the test machine) is opened to
    them (o+x: enter, not list) while this module's service runs, and closed again."""
    from flows.service.files import closed_dir

    opened: dict[Path, int] = {}
    if os.geteuid() == 0:
        for p in (Path(sys.executable), Path(sys.executable).resolve(), Path(sys.prefix), Path(sys.base_prefix), ROOT):
            while (closed := closed_dir(p)) is not None and closed not in opened:
                opened[closed] = stat.S_IMODE(closed.stat().st_mode)
                closed.chmod(opened[closed] | 0o001)
    yield
    for p, mode in opened.items():
        p.chmod(mode)


def _worker_uid(svc: service.Service) -> int:
    """Whom the worker runs as: the service user when we are root, else us."""
    import pwd

    return pwd.getpwnam(svc.service_user).pw_uid if os.geteuid() == 0 else os.getuid()


def _svc(home: Path) -> service.Service:
    return service.Service(home=SageHome(home), say=lambda s: None)


# ---- process management, without PostgreSQL or Prefect ---------------------------------------------------------------

def test_stop_ends_the_recorded_process_and_what_it_started_and_is_safe_twice(home):
    svc = _svc(home)
    svc.dir.mkdir(parents=True)
    pid = service._spawn(svc, "worker", ["sh", "-c", "sleep 300 & sleep 300; wait"])
    time.sleep(0.5)  # the shell has started its first sleep
    kids = service._descendants(pid)
    assert len(kids) >= 1
    starts = {p: service._start_time(p) for p in [pid, *kids]}
    assert service.status(svc) == {"worker": pid, "server": None, "postgres": None}

    assert service.stop(svc) == ["worker"]
    assert not [p for p, s in starts.items() if _alive(p, s)]
    assert not (svc.dir / "worker.pid").exists()
    assert service.stop(svc) == []  # nothing left: no error


def test_a_recorded_pid_now_owned_by_another_process_is_left_alone(home):
    """A pid file whose pid was reused (another start time) is stale: nothing is signalled, the record is dropped."""
    svc = _svc(home)
    svc.dir.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (svc.dir / "server.pid").write_text(json.dumps({"pid": bystander.pid, "start": "1"}))
        assert service.recorded(svc, "server") is None
        assert service.stop(svc) == []
        assert bystander.poll() is None  # still running
        assert not (svc.dir / "server.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_taken_port_is_refused_in_one_line_naming_the_variable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(service.ServiceError, match=rf"port {port} .* PG_PORT=N") as err:
            service._check_port(port, "PostgreSQL", "PG_PORT")
    assert "\n" not in str(err.value)


def test_missing_postgresql_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGE_PG_BIN", str(tmp_path))
    with pytest.raises(service.ServiceError, match="PostgreSQL not found: `make serve` installs it"):
        service.pg_bin()


def test_the_service_environment_is_its_own(home):
    env = service.Service(home=SageHome(home), api_port=4999).env()
    assert env["PREFECT_HOME"] == str(home / "service" / "prefect")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["SAGE_HOME"] == str(home) and env["SAGE_REPO"] == str(ROOT)


def test_the_service_runs_with_the_projects_quiet_prefect_environment(home, monkeypatch):
    for name in [*quiet_prefect(env={}), "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"]:
        monkeypatch.delenv(name, raising=False)
    env = service.Service(home=SageHome(home), api_port=4999).env()
    assert env["PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"] == "WARNING"  # no task-run chatter in the UI
    assert env["PREFECT_LOGGING_LEVEL"] == "INFO"  # the flows' own lines reach the API
    assert env["PREFECT_SERVER_LOGGING_LEVEL"] == "WARNING"  # the server's errors reach server.log
    assert env["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "INFO"  # worker.log keeps each run's lines
    assert {k: env[k] for k in quiet_prefect(env={}) if k not in (
        "PREFECT_SERVER_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")} == {
        k: v for k, v in quiet_prefect(env={}).items() if k not in (
            "PREFECT_SERVER_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")}


# ---- the service, end to end ----------------------------------------------------------------------------------------

def _make(target: str, home: Path, env: dict, **variables) -> subprocess.CompletedProcess:
    # -o: the install stamp counts as up to date (pytest runs in that environment already; no reinstall mid-test);
    # an outer `make test`'s flags and jobserver stay out
    env = {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    args = ["make", "--no-print-directory", "-o", str(VENV / ".sage-installed"), target, f"VENV={VENV}",
            f"SAGE_HOME={home}", *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _drop_changed_sae(zoo_home: Path, model: str, inbox: Path) -> Path:
    """A zoo SAE copied into the watched folder with its decoder scaled: weights no run has scored."""
    from safetensors.torch import load_file, save_file

    src = next(p for p in sorted(SageHome(zoo_home).saes_root(model).iterdir()) if "hook_resid_post" in p.name)
    dst = inbox / f"lab-{src.name}"
    shutil.copytree(src, dst)
    weights = load_file(dst / "sae_weights.safetensors")
    weights["W_dec"] = weights["W_dec"] * 1.5
    save_file(weights, dst / "sae_weights.safetensors")
    return dst


def _api(svc: service.Service, path: str, body: dict | None = None):
    """The service's REST API as its owner (the password from SAGE_HOME/service/api.secret)."""
    code, answer = _call(f"{svc.api_url}{path}", body, auth=_auth_of(svc))
    assert code == 200, (code, path)
    return answer


def flow_log(svc: service.Service, run_id: str) -> str:
    return flow_log_with(svc.api_url, _auth_of(svc), run_id)


def _run_deployment(svc: service.Service, env: dict, params: dict) -> tuple[str, str]:
    """`prefect deployment run 'watch/watch-nightly'` as the README shows it; (flow run id, its final state)."""
    r = subprocess.run([service.prefect_cli(), "deployment", "run", "watch/watch-nightly", "--params",
                        json.dumps(params), "--watch", "--watch-interval", "1", "--watch-timeout", "500"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    assert run_id, r.stdout + r.stderr
    return run_id[1], _api(svc, f"/flow_runs/{run_id[1]}")["state_type"]


def _completed_watch_runs_in_postgres(svc: service.Service) -> int:
    """Asked of PostgreSQL itself: the server kept its state there, not in a SQLite file."""
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(user=service.DB_USER, password=(svc.dir / "postgres.secret").read_text().strip(),
                                     host="127.0.0.1", port=svc.pg_port, database=service.DB_NAME)
        try:
            return await conn.fetchval("SELECT count(*) FROM flow_run f JOIN deployment d ON f.deployment_id = d.id "
                                       "WHERE d.name = 'watch-nightly' AND f.state_type = 'COMPLETED'")
        finally:
            await conn.close()

    return asyncio.run(count())


SERVE_ARGS = "--deployment watch-nightly --deployment evaluate"  # the ones these tests run (prefect deploy imports each)


@dataclass
class Served:
    """The module's one running service, as `make serve` started it: the end-to-end tests share it (each start from
    nothing costs initdb, a server, `prefect deploy` and a worker); each brings it up first if it is not."""
    svc: service.Service
    env: dict  # no Prefect setting of this session; the server logs errors, the worker polls every second
    up: subprocess.CompletedProcess  # the first `make serve`
    up_s: float
    dropped: Path  # a changed zoo SAE in the watched folder SAGE_HOME/lab-inbox, there before `make serve`

    @property
    def home(self) -> Path:
        return self.svc.home.root

    def make(self, target: str) -> subprocess.CompletedProcess:
        return _make(target, self.home, self.env, PREFECT_PORT=self.svc.api_port, PG_PORT=self.svc.pg_port,
                     SERVE_ARGS=SERVE_ARGS)

    def ensure_up(self) -> None:
        """Not fully up (the `make serve-stop` test, or a failed test, ran before): `make serve` restarts what is
        not running."""
        if not all(p.ok for p in service.health(self.svc)):
            again = self.make("serve")
            assert again.returncode == 0, again.stdout + again.stderr


@pytest.fixture(scope="module")
def served(tiny_zoo, runnable_by_service_user):
    if shutil.which("make") is None:
        pytest.fail("`make` is needed to run `make serve`")
    try:
        service.pg_bin()
    except service.ServiceError as exc:
        pytest.fail(f"{exc} (`make test` installs PostgreSQL before the tests)")
    home = Path(tempfile.mkdtemp(prefix="sage-serve-"))  # the `postgres` user may enter it (tmp_path: closed)
    home.chmod(0o711)
    zoo_home, zoo_cfg = tiny_zoo[0], tiny_zoo[1]
    port, pg_port = _free_port(), _free_port()
    while pg_port == port:
        pg_port = _free_port()
    svc = service.Service(home=SageHome(home), api_port=port, pg_port=pg_port,
                          deployments=tuple(SERVE_ARGS.split()[1::2]), say=lambda s: None)
    # none of this session's Prefect settings (its test server, quiet log levels) reach the service; the server logs
    # errors (a `database is locked` would show), the flow runs send their INFO logs; the worker polls every second
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    # a watched folder and the session's tiny zoo, there before `make serve` hands the data root to the service user
    # (the flow checks the zoo whole, by content, and reuses it: a run's cost is the service's, not the zoo build's)
    (home / "lab-inbox").mkdir()
    dropped = _drop_changed_sae(zoo_home, zoo_cfg.model.name, home / "lab-inbox")
    for part in ("zoo", "datasets"):
        shutil.copytree(zoo_home / part, home / part)
    try:
        t0 = time.perf_counter()
        up = _make("serve", home, env, PREFECT_PORT=port, PG_PORT=pg_port, SERVE_ARGS=SERVE_ARGS)
        if up.returncode != 0:
            pytest.fail(f"`make serve` failed:\n{up.stdout}{up.stderr}")
        yield Served(svc, env, up, time.perf_counter() - t0, dropped)
    finally:
        service.stop(svc)  # by the recorded pids
        shutil.rmtree(home, ignore_errors=True)


def _pids(svc: service.Service) -> dict[str, tuple[int, str]]:
    recs = {name: json.loads((svc.dir / f"{name}.pid").read_text()) for name in service.STOP_ORDER}
    return {name: (rec["pid"], rec["start"]) for name, rec in recs.items()}


@pytest.mark.slow
def test_make_serve_runs_watch_nightly_on_postgres_end_to_end(served, tiny_zoo, capsys):
    from sage_core.config import EvaluateConfig, WatchConfig
    from sage_core.locate.attribution import LocateConfig
    from storage.ledger import Ledger
    from storage.sae_sources import _dir_weights_hash
    from storage.scores import read_run

    svc, home, dropped, zoo_cfg = served.svc, served.home, served.dropped, tiny_zoo[1]
    client_env = served.env | {"PREFECT_API_URL": svc.api_url, "PREFECT_HOME": str(svc.dir / "prefect")}
    took: dict[str, float] = {"make serve": served.up_s}

    def timed(step, fn):
        t0 = time.perf_counter()
        out = fn()
        took[step] = time.perf_counter() - t0
        return out

    try:
        up = served.up
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Prefect UI:  http://127.0.0.1:{svc.api_port}" in up.stdout and "make serve-stop" in up.stdout
        served.ensure_up()
        pids = _pids(svc)
        for name in service.STOP_ORDER:
            assert _alive(*pids[name]), name

        # what was served: the nightly schedule is active, its default sources use this SAGE_HOME
        [dep] = _api(svc, "/deployments/filter", {"deployments": {"name": {"any_": ["watch-nightly"]}}})
        assert [(s["schedule"]["cron"], s["active"]) for s in dep["schedules"]] == [("0 3 * * *", True)]
        assert dep["parameters"]["sources"][0] == f"dir:{home}/inbox" and (home / "inbox").is_dir()
        assert dep["work_pool_name"] == "sage-process"

        # one task with a short location search: the run's cost is the service's
        cfg = WatchConfig(evaluate=EvaluateConfig(zoo=zoo_cfg, tasks=("ioi",), per_group=1, core_sequences=32,
                                                  min_task_accuracy=0.0,
                                                  locate=LocateConfig(n_pairs=8, n_validate_top=2,
                                                                      n_validate_random=1, ig_steps=2)))
        params = {"sources": [f"dir:{dropped.parent}"], "cfg": cfg.model_dump(mode="json")}

        first, state = timed("watch run 1", lambda: _run_deployment(svc, client_env, params))
        assert state == "COMPLETED", flow_log(svc, first)
        assert "1 SAE(s) listed, 1 new" in flow_log(svc, first)
        # only watch runs write the ledger (the other tests run `evaluate`): its counts are this test's
        ledger = Ledger.of(SageHome(home))
        [row] = ledger.saes().to_dicts()
        assert (row["sae_id"], row["status"]) == (str(dropped), "evaluated") and row["run"]
        [ev] = ledger.evaluations().to_dicts()
        assert (ev["content_hash"], ev["status"], ev["run"]) == (_dir_weights_hash(dropped), "evaluated", row["run"])
        _, leaderboard, _ = read_run(SageHome(home).scores_dir(row["run"]))
        assert ev["sae"] in set(leaderboard["sae"])

        second, state = timed("watch run 2", lambda: _run_deployment(svc, client_env, params))
        assert state == "COMPLETED", flow_log(svc, second)
        assert "1 SAE(s) listed, 0 new" in flow_log(svc, second)
        assert ledger.evaluations().height == 1
        [again] = ledger.saes().to_dicts()
        assert (again["status"], again["run"]) == ("evaluated", row["run"])

        assert _completed_watch_runs_in_postgres(svc) == 2  # no other test runs watch-nightly
        # the worker and what its runs wrote are the service user's where root started it (ours otherwise)
        uid = _worker_uid(svc)
        assert psutil.Process(pids["worker"][0]).uids().real == uid
        assert SageHome(home).ledger_path().stat().st_uid == uid
        logs = {p.name: p.read_text(errors="replace") for p in svc.dir.glob("*.log")}
        assert {"postgres.log", "server.log", "worker.log"} <= set(logs)
        assert not [n for n, text in logs.items() if "database is locked" in text]
        for secret in ((svc.dir / "postgres.secret").read_text().strip(), _auth_of(svc).split(":", 1)[1]):
            assert not [n for n, text in logs.items() if secret in text]
    finally:
        with capsys.disabled():
            print("\n[service e2e] " + ", ".join(f"{k}: {v:.1f} s" for k, v in took.items()))


# ---- issue 27: nobody but the service's owner runs code through it (item 1); a part that died is reported and
# restarted alone, and the runs it interrupted end Crashed (item 11); the UI's build under SAGE_HOME -------------------

def test_the_service_decides_py_specs_itself_and_keeps_prefects_ui_build_under_sage_home(home, monkeypatch):
    """An exported SAGE_ALLOW_PY_SPECS (or a Prefect auth or UI setting) never reaches the service's processes; only
    allow_py_specs (`sage serve start --allow-py-specs`) turns `py:` specs on; the UI's build goes under SAGE_HOME."""
    from storage.py_specs import PY_SPECS_ENV

    monkeypatch.setenv(PY_SPECS_ENV, "1")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "someone:else")
    env = service.Service(home=SageHome(home)).env()
    assert PY_SPECS_ENV not in env and "PREFECT_API_AUTH_STRING" not in env
    assert env["PREFECT_SERVER_UI_STATIC_DIRECTORY"] == str(home / "service" / "ui")
    assert service.Service(home=SageHome(home), allow_py_specs=True).env()[PY_SPECS_ENV] == "1"
    assert service.PY_SPECS_ENV == PY_SPECS_ENV


HOSTILE_JOB_VARIABLES = {"env": {"SAGE_ALLOW_PY_SPECS": "1", "PYTHONPATH": "/tmp/attacker"},
                         "command": "sh -c 'id > /tmp/owned'", "working_dir": "/tmp/attacker"}


def test_the_work_pool_template_lets_no_job_variable_change_what_runs(home):
    """The worker builds a flow run's process from the pool's template and the run's job variables: with the service's
    template, hostile ones change nothing (worker side), and the server refuses them (its own validation, as it runs
    on POST /deployments/{id}/create_flow_run), while prefect.yaml's own deployments pass."""
    import asyncio

    import yaml
    from prefect.utilities.schema_tools.validation import ValidationError, validate
    from prefect.workers.process import ProcessJobConfiguration

    svc = _svc(home)
    template = service.pool_template(svc)
    config = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, HOSTILE_JOB_VARIABLES))
    assert config.command is None and config.working_dir is None
    assert "SAGE_ALLOW_PY_SPECS" not in config.env and config.env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")

    def check(job_variables):
        validate(job_variables, template["variables"], raise_on_error=True, preprocess=True, ignore_required=False,
                 allow_none_with_default=True)

    for hostile in ({"env": HOSTILE_JOB_VARIABLES["env"]}, {"command": "x"}, {"working_dir": "/tmp"},
                    {"env": {"SAGE_HOME": "/tmp/elsewhere"}}):
        with pytest.raises(ValidationError):
            check(hostile)
    for dep in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        env = dep["work_pool"]["job_variables"]["env"]
        check({"env": {k: v.replace("{{ $SAGE_HOME }}", str(svc.home.root)) for k, v in env.items()}})


def test_the_api_password_and_profile_are_private_and_prefect_reads_the_profile(home):
    """The password is made once, 0600; a Prefect client run with PREFECT_HOME=SAGE_HOME/service/prefect (as the
    `run now:` line of `make serve` shows) gets the service's URL and password from the profile (0600 too)."""
    svc = _svc(home)
    svc.dir.mkdir(parents=True)
    auth = service.ensure_auth(svc)
    assert auth.startswith("sage:") and len(auth) > 30 and service.ensure_auth(svc) == auth  # made once
    for path in (svc.secret_path, svc.prefect_home / "profiles.toml", svc.prefect_home):
        assert path.stat().st_mode & 0o077 == 0, path
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(svc.prefect_home)}
    read = subprocess.run([sys.executable, "-c", "from prefect.settings import get_current_settings as g; "
                           "s = g().api; print(s.url, s.auth_string.get_secret_value())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert read.stdout.split() == [svc.api_url, auth], read.stderr
    assert svc.env()["PREFECT_API_AUTH_STRING"] == auth


def test_status_tells_a_part_that_died_from_one_that_was_stopped(home):
    svc = _svc(home)
    svc.dir.mkdir(parents=True)
    pid = service._spawn(svc, "postgres", ["sleep", "300"])
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    parts = {p.name: p for p in service.health(svc)}
    assert (parts["postgres"].state, parts["server"].state, parts["worker"].state) == ("dead", "stopped", "stopped")
    assert f"pid {pid} exited" in parts["postgres"].line() and f"127.0.0.1:{svc.pg_port}" in parts["postgres"].line()
    assert (svc.dir / "postgres.pid").exists()  # still dead on the next look, until `start` restarts it


def _auth_of(svc: service.Service) -> str | None:
    try:
        return (svc.dir / "api.secret").read_text().strip()
    except FileNotFoundError:
        return None


def _call(url: str, body=None, auth: str | None = None, method: str | None = None) -> tuple[int, object]:
    """(HTTP status, JSON answer or None) of one request, with HTTP Basic `auth` if given."""
    import base64
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers,
                                 method=method or ("GET" if body is None else "POST"))
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        return e.code, None


def _as_nobody(fn) -> dict:
    """fn() run in a child process as `nobody` (when we are root; otherwise as ourselves, without the password): its
    JSON-able answer, with the child's uid."""
    import pwd

    return as_user(pwd.getpwnam("nobody") if os.geteuid() == 0 else None, lambda: {"uid": os.getuid(), **fn()})


def _final_state(url: str, auth: str | None, run_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, run = _call(f"{url}/flow_runs/{run_id}", auth=auth)
        if run and run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            return run["state_type"] if run else f"HTTP {code}"
        time.sleep(1)


@pytest.mark.slow
def test_a_local_user_cannot_run_code_as_the_worker(served):
    """The attack of issue 27 item 1: a flow run of `evaluate` with job_variables.env = {SAGE_ALLOW_PY_SPECS: 1,
    PYTHONPATH: <attacker's folder>} and a `py:` spec whose package writes a file when imported. As `nobody` (no
    password: the secrets are 0600) every API call is refused (401); as the owner, the server refuses those job
    variables (422); a flow run that carries them anyway (POST /flow_runs/ skips the server's check) runs with the
    worker's environment: the spec is refused and nothing of the attacker's is imported. Started by root, the worker
    runs as the unprivileged service user (whose environment, holding the password, `nobody` cannot read either)."""
    attacker = Path(tempfile.mkdtemp(prefix="sage-attacker-"))
    attacker.chmod(0o777)
    (attacker / "evilpkg").mkdir()
    marker = attacker / "owned"
    (attacker / "evilpkg" / "__init__.py").write_text(f"import os\nopen({str(marker)!r}, 'w').write(str(os.getuid()))\n")
    (attacker / "evilpkg" / "mod.py").write_text("def make():\n    raise SystemExit\n")
    hostile = {"env": {"SAGE_ALLOW_PY_SPECS": "1", "PYTHONPATH": str(attacker)}}
    params = {"cfg": {"saes": ["py:evilpkg.mod:make"]}}
    svc = served.svc
    try:
        served.ensure_up()
        auth = _auth_of(svc)
        url = svc.api_url
        _, dep = _call(f"{url}/deployments/name/evaluate/evaluate", auth=auth)
        worker = service.recorded(svc, "worker")

        def attack() -> dict:
            def readable(p: Path) -> bool:
                try:
                    p.read_bytes()
                    return True
                except OSError:
                    return False
            return {"read": sorted(p.name for p in (svc.dir / "api.secret", svc.dir / "postgres.secret",
                                                    svc.dir / "prefect" / "profiles.toml",
                                                    Path(f"/proc/{worker}/environ")) if readable(p)),
                    "read deployment": _call(f"{url}/deployments/name/evaluate/evaluate")[0],
                    "create run": _call(f"{url}/deployments/{dep['id']}/create_flow_run",
                                        {"parameters": params, "job_variables": hostile})[0],
                    "create run directly": _call(f"{url}/flow_runs/", {
                        "flow_id": dep["flow_id"], "deployment_id": dep["id"], "work_pool_name": svc.pool,
                        "parameters": params, "job_variables": hostile})[0]}

        seen = _as_nobody(attack)
        owner_create = _call(f"{url}/deployments/{dep['id']}/create_flow_run",
                             {"parameters": params, "job_variables": hostile}, auth=auth)[0]
        code, run = _call(f"{url}/flow_runs/", {"flow_id": dep["flow_id"], "deployment_id": dep["id"],
                                                "work_pool_name": svc.pool, "parameters": params,
                                                "job_variables": hostile,
                                                "state": {"type": "SCHEDULED", "name": "Scheduled"}}, auth=auth)
        assert code == 201, code
        state = _final_state(url, auth, run["id"])
        log = flow_log_with(url, auth, run["id"], waiting_for="imports and runs Python code")
        observed = {"worker's uid": psutil.Process(worker).uids().real, "nobody": seen,
                    "owner, job variables": owner_create, "run that carries them": state,
                    "imported the attacker's code": marker.exists(),
                    "py: spec refused": "imports and runs Python code" in log,
                    "the UI's build under SAGE_HOME": (svc.dir / "ui" / "v1" / "index.html").is_file()}
        expected = {"worker's uid": _worker_uid(svc), "nobody": {"uid": 65534 if os.geteuid() == 0 else os.getuid(), "read": [],
                               "read deployment": 401, "create run": 401, "create run directly": 401},
                    "owner, job variables": 422, "run that carries them": "FAILED",
                    "imported the attacker's code": False, "py: spec refused": True,
                    "the UI's build under SAGE_HOME": True}
        if os.geteuid() != 0:  # as ourselves we can read our own files; only the password's absence is tested
            observed["nobody"].pop("read")
            expected["nobody"].pop("read")
        assert observed == expected, log[-3000:]
    finally:
        shutil.rmtree(attacker, ignore_errors=True)


def flow_log_with(url: str, auth: str | None, run_id: str, waiting_for: str = "", wait_s: float = 30) -> str:
    """The flow run's log; with `waiting_for`, read again (up to `wait_s`) until it holds that text: a run's log
    records are shipped in batches after its state, so the last ones may arrive a few seconds later."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        _, logs = _call(f"{url}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"},
                        auth=auth)
        text = "\n".join(entry["message"] for entry in logs or [])
        if waiting_for in text or time.monotonic() > deadline:
            return text
        time.sleep(1)


def _state(url: str, auth: str | None, run_id: str) -> str:
    code, run = _call(f"{url}/flow_runs/{run_id}", auth=auth)
    return run["state_type"] if run else f"HTTP {code}"


@pytest.mark.slow
def test_a_killed_postgres_is_reported_dead_and_make_serve_restarts_it_alone_and_ends_its_runs_crashed(
        served):
    """Issue 27 item 11: PostgreSQL killed (SIGKILL) under a flow run that Prefect shows as Running and whose process
    died with it. `make serve-status` says PostgreSQL is dead (exit 1); `make serve` restarts PostgreSQL alone (the
    server and the worker keep their pids) and ends that run Crashed; then every part is up again."""
    svc = served.svc

    def pids() -> dict[str, int]:
        return {n: pid for n, (pid, _) in _pids(svc).items()}

    served.ensure_up()
    auth, url = _auth_of(svc), svc.api_url
    _, dep = _call(f"{url}/deployments/name/evaluate/evaluate", auth=auth)
    code, run = _call(f"{url}/deployments/{dep['id']}/create_flow_run",
                      {"state": {"type": "RUNNING", "name": "Running"}}, auth=auth)
    assert code == 201 and run["state_type"] == "RUNNING", (code, run)
    its_process = subprocess.Popen(["sleep", "300"])  # the run's process, as the worker records it
    assert _call(f"{url}/flow_runs/{run['id']}", {"infrastructure_pid": str(its_process.pid)}, auth=auth,
                 method="PATCH")[0] == 204
    before = pids()
    for pid in (before["postgres"], its_process.pid):  # both die: the run can no longer say how it ended
        os.kill(pid, signal.SIGKILL)
    its_process.wait()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(before["postgres"], 0)  # reaped here if this process started it

    status = served.make("serve-status")
    up = served.make("serve")
    after = pids() if up.returncode == 0 else {}
    status_after = served.make("serve-status")
    observed = {
        "status says postgres dead": re.search(r"postgres\s+dead", status.stdout) is not None,
        "status fails": status.returncode != 0,  # sage exits 1, make then 2
        "make serve exit": up.returncode,
        "restarted": sorted(n for n in service.STOP_ORDER if after.get(n) != before[n]),
        "run": _state(url, auth, run["id"]),
        "status after": (status_after.returncode,
                         sorted(re.findall(r"(postgres|server|worker)\s+up\b", status_after.stdout))),
    }
    assert observed == {"status says postgres dead": True, "status fails": True, "make serve exit": 0,
                        "restarted": ["postgres"], "run": "CRASHED",
                        "status after": (0, ["postgres", "server", "worker"])}, \
        "\n".join((status.stdout, status.stderr, up.stdout, up.stderr, status_after.stdout))


@pytest.mark.slow
def test_make_serve_stop_stops_every_part_and_is_safe_twice(served):
    """Last in this file: run in file order, nothing starts the service again; in any other order the next test's
    ensure_up brings it back (`make serve`, from its data under SAGE_HOME)."""
    served.ensure_up()
    pids = _pids(served.svc)
    down = served.make("serve-stop")
    leftover = {n: pid for n, (pid, start) in pids.items() if _alive(pid, start)}
    for pid in leftover.values():  # never leave a server running after a failed test
        os.kill(pid, signal.SIGKILL)
    assert down.returncode == 0 and "stopped: worker, server, postgres" in down.stdout, down.stdout + down.stderr
    assert not leftover
    again = served.make("serve-stop")
    assert again.returncode == 0 and "nothing of the service was running" in again.stdout
