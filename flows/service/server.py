"""The Prefect server on PostgreSQL, its password, the work pool and the deployments of prefect.yaml."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from flows.service.config import API_USER, HOST, REPO, Service, ServiceError
from flows.service.files import write_private
from flows.service.processes import _await, _check_port, _last_line, _spawn, _stop_one, recorded
from flows.service.rest import _get


def prefect_cli() -> str:
    """The `prefect` command of this environment (the service's processes run in it)."""
    return str(Path(sys.executable).parent / "prefect")


def ensure_auth(svc: Service) -> str:
    """The API's password, made once (0600, like the database's), and the service's Prefect profile (0600) that gives
    any Prefect client run with PREFECT_HOME=SAGE_HOME/service/prefect this API and its password."""
    auth = svc.auth()
    if auth is None:
        auth = f"{API_USER}:{secrets.token_urlsafe(32)}"
        write_private(svc.secret_path, auth + "\n")
    os.chmod(svc.secret_path, 0o600)
    svc.prefect_home.mkdir(mode=0o700, exist_ok=True)
    os.chmod(svc.prefect_home, 0o700)
    write_private(svc.prefect_home / "profiles.toml",
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
