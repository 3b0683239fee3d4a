"""The standing service (issue 18, items 5-6): `make serve` starts PostgreSQL, the Prefect server on it, the work pool,
every deployment of prefect.yaml and one process worker on 127.0.0.1; a run of `watch-nightly` evaluates an SAE
dropped into a watched folder, the next run evaluates nothing; `make serve-stop` ends every process by its pid.

The service gets its own SAGE_HOME, ports and PREFECT_HOME (and every Prefect setting of this session dropped from its
environment), so it never meets the session's `prefect_harness` server the other tests use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.service import api, flow_log
from flows import service
from storage.home import SageHome

pytestmark = [pytest.mark.acceptance]

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, start: str | None) -> bool:
    """That very process (same kernel start time) runs and is no zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and fields[19] == start


@pytest.fixture
def home():
    """A SAGE_HOME the `postgres` user may enter (pytest's tmp_path sits in a directory closed to other users)."""
    d = Path(tempfile.mkdtemp(prefix="sage-serve-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


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
    starts = {p: Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19] for p in [pid, *kids]}
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


def _run_deployment(api_url: str, env: dict, params: dict) -> tuple[str, str]:
    """`prefect deployment run 'watch/watch-nightly'` as the README shows it; (flow run id, its final state)."""
    r = subprocess.run([service.prefect_cli(), "deployment", "run", "watch/watch-nightly", "--params",
                        json.dumps(params), "--watch", "--watch-interval", "1", "--watch-timeout", "500"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    assert run_id, r.stdout + r.stderr
    return run_id[1], api(api_url, f"/flow_runs/{run_id[1]}")["state_type"]


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


@pytest.mark.slow
def test_make_serve_runs_watch_nightly_on_postgres_end_to_end(home, tiny_zoo, tmp_path, capsys):
    from sage_core.config import EvaluateConfig, WatchConfig
    from sage_core.locate.attribution import LocateConfig
    from storage.ledger import Ledger
    from storage.sae_sources import _dir_weights_hash
    from storage.scores import read_run

    if shutil.which("make") is None:
        pytest.fail("`make` is needed to run `make serve`")
    try:
        service.pg_bin()
    except service.ServiceError as exc:
        pytest.fail(f"{exc} (`make test` installs PostgreSQL before the tests)")
    zoo_home, zoo_cfg = tiny_zoo[0], tiny_zoo[1]
    port, pg_port = _free_port(), _free_port()
    while pg_port == port:
        pg_port = _free_port()
    svc = service.Service(home=SageHome(home), api_port=port, pg_port=pg_port)
    # none of this session's Prefect settings (its test server, quiet log levels) reach the service; the server logs
    # errors (a `database is locked` would show), the flow runs send their INFO logs; the worker polls every second
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    client_env = env | {"PREFECT_API_URL": svc.api_url, "PREFECT_HOME": str(svc.dir / "prefect")}
    took: dict[str, float] = {}

    def timed(step, fn):
        t0 = time.perf_counter()
        out = fn()
        took[step] = time.perf_counter() - t0
        return out

    pids: dict[str, tuple[int, str]] = {}
    try:
        # only the deployment this test runs: `prefect deploy` imports each one's flow (every one is checked to load
        # and take its parameters in tests/unit/flows/test_deployments.py)
        up = timed("make serve", lambda: _make("serve", home, env, PREFECT_PORT=port, PG_PORT=pg_port,
                                               SERVE_ARGS="--deployment watch-nightly"))
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Prefect UI:  http://127.0.0.1:{port}" in up.stdout and "make serve-stop" in up.stdout
        for name in service.STOP_ORDER:
            rec = json.loads((svc.dir / f"{name}.pid").read_text())
            pids[name] = (rec["pid"], rec["start"])
            assert _alive(*pids[name]), name

        # what was served: the nightly schedule is active, its default sources use this SAGE_HOME
        [dep] = api(svc.api_url, "/deployments/filter", {"deployments": {"name": {"any_": ["watch-nightly"]}}})
        assert [(s["schedule"]["cron"], s["active"]) for s in dep["schedules"]] == [("0 3 * * *", True)]
        assert dep["parameters"]["sources"][0] == f"dir:{home}/inbox" and (home / "inbox").is_dir()
        assert dep["work_pool_name"] == "sage-process"

        inbox = tmp_path / "inbox"
        inbox.mkdir()
        dropped = _drop_changed_sae(zoo_home, zoo_cfg.model.name, inbox)
        # the tiny zoo the session built, copied in (the flow checks it whole, by content, and reuses it), and one task
        # with a short location search: the run's cost is the service's, not the zoo build's
        for part in ("zoo", "datasets"):
            shutil.copytree(zoo_home / part, home / part)
        cfg = WatchConfig(evaluate=EvaluateConfig(zoo=zoo_cfg, tasks=("ioi",), per_group=1, core_sequences=32,
                                                  min_task_accuracy=0.0,
                                                  locate=LocateConfig(n_pairs=8, n_validate_top=2,
                                                                      n_validate_random=1, ig_steps=2)))
        params = {"sources": [f"dir:{inbox}"], "cfg": cfg.model_dump(mode="json")}

        first, state = timed("watch run 1", lambda: _run_deployment(svc.api_url, client_env, params))
        assert state == "COMPLETED", flow_log(svc.api_url, first)
        assert "1 SAE(s) listed, 1 new" in flow_log(svc.api_url, first)
        ledger = Ledger.of(SageHome(home))
        [row] = ledger.saes().to_dicts()
        assert (row["sae_id"], row["status"]) == (str(dropped), "evaluated") and row["run"]
        [ev] = ledger.evaluations().to_dicts()
        assert (ev["content_hash"], ev["status"], ev["run"]) == (_dir_weights_hash(dropped), "evaluated", row["run"])
        _, leaderboard, _ = read_run(SageHome(home).scores_dir(row["run"]))
        assert ev["sae"] in set(leaderboard["sae"])

        second, state = timed("watch run 2", lambda: _run_deployment(svc.api_url, client_env, params))
        assert state == "COMPLETED", flow_log(svc.api_url, second)
        assert "1 SAE(s) listed, 0 new" in flow_log(svc.api_url, second)
        assert ledger.evaluations().height == 1
        [again] = ledger.saes().to_dicts()
        assert (again["status"], again["run"]) == ("evaluated", row["run"])

        assert _completed_watch_runs_in_postgres(svc) == 2
        logs = {p.name: p.read_text(errors="replace") for p in svc.dir.glob("*.log")}
        assert {"postgres.log", "server.log", "worker.log"} <= set(logs)
        assert not [n for n, text in logs.items() if "database is locked" in text]
        secret = (svc.dir / "postgres.secret").read_text().strip()
        assert not [n for n, text in logs.items() if secret in text]
    finally:
        down = timed("make serve-stop", lambda: _make("serve-stop", home, env))
        leftover = {n: pid for n, (pid, start) in pids.items() if _alive(pid, start)}
        for pid in leftover.values():  # never leave a server running after a failed test
            os.kill(pid, signal.SIGKILL)
        with capsys.disabled():
            print("\n[service e2e] " + ", ".join(f"{k}: {v:.1f} s" for k, v in took.items()))
    assert down.returncode == 0 and "stopped: worker, server, postgres" in down.stdout, down.stdout + down.stderr
    assert not leftover
    again = _make("serve-stop", home, env)
    assert again.returncode == 0 and "nothing of the service was running" in again.stdout
