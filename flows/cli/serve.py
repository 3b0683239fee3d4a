"""`sage serve start | stop | status`: the standing service (`make serve`, `make serve-stop`), see flows/service/."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from flows.cli.options import Home, app, console, fail

serve_app = typer.Typer(help="The standing service: PostgreSQL, the Prefect server on it, the deployments of "
                             "prefect.yaml and one worker, on 127.0.0.1.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

Port = Annotated[int, typer.Option(help="the Prefect server's port (API and UI)")]
PgPort = Annotated[int, typer.Option(help="PostgreSQL's port (5433: a system cluster may hold 5432)")]


def _service(home: str | None, port: int = 4200, pg_port: int = 5433, **kw):
    from flows.service import Service
    from storage.home import SageHome

    return Service(home=SageHome(home), api_port=port, pg_port=pg_port, say=lambda s: console.print(s, highlight=False),
                   **kw)


@serve_app.command("start")
def serve_start(
    home: Home = None,
    port: Port = 4200,
    pg_port: PgPort = 5433,
    deployment: Annotated[list[str] | None, typer.Option(help="deploy only this deployment of prefect.yaml "
                                                              "(repeatable; default: all of them)")] = None,
    worker_limit: Annotated[int, typer.Option(help="flow runs the worker runs at once (0: no limit)")] = 1,
    allow_py_specs: Annotated[bool, typer.Option(help="let the worker's flow runs import and run `py:` SAE specs "
                                                      "(code named by a run's parameters, run as this user); the "
                                                      "worker's own setting, no flow run can change it")] = False,
) -> None:
    """Start what is not running yet, deploy prefect.yaml, and print where the UI is."""
    from flows.service import ServiceError, prefect_cli, start

    if not (1 <= port <= 65535 and 1 <= pg_port <= 65535) or port == pg_port:
        fail(f"--port {port} / --pg-port {pg_port}: give two different ports between 1 and 65535")
    if worker_limit < 0:
        fail(f"--worker-limit {worker_limit}: give 0 (no limit) or more")
    svc = _service(home, port, pg_port, deployments=tuple(deployment or ()), worker_limit=worker_limit or None,
                   allow_py_specs=allow_py_specs)
    console.print(f"starting the SAGE service under {svc.dir} ...")
    t0 = time.perf_counter()
    try:
        start(svc)
    except (ServiceError, OSError) as exc:
        fail(exc)
    cli = os.path.relpath(prefect_cli()) if prefect_cli().startswith(os.getcwd()) else prefect_cli()
    console.print(f"service up in {time.perf_counter() - t0:.1f} s\n"
                  f"  Prefect UI:  {svc.ui_url} (user:password: the line in {svc.secret_path}, readable by you only)\n"
                  f"  API:         PREFECT_API_URL={svc.api_url} with PREFECT_API_AUTH_STRING=$(cat "
                  f"{svc.secret_path}), or PREFECT_HOME={svc.prefect_home} (a profile with both)\n"
                  f"  drop SAEs:   into {svc.inbox} (watch-nightly runs at 03:00 UTC; its sources: prefect.yaml)\n"
                  f"  run now:     PREFECT_HOME={svc.prefect_home} {cli} deployment run 'watch/watch-nightly'\n"
                  f"  py: specs:   {'allowed' if svc.allow_py_specs else 'refused'} in the worker's flow runs "
                  f"(sage serve start --allow-py-specs)\n"
                  f"  logs:        {svc.dir}/*.log\n"
                  f"  stop:        make serve-stop SAGE_HOME={svc.home.root}", highlight=False, soft_wrap=True)


@serve_app.command("stop")
def serve_stop(home: Home = None) -> None:
    """Stop the worker, the server and PostgreSQL, by the pids `start` recorded (safe to run twice)."""
    from flows.service import stop

    svc = _service(home)
    stopped = stop(svc)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing of the service was running ({svc.dir})",
                  highlight=False)


@serve_app.command("status")
def serve_status(home: Home = None, port: Port = 4200, pg_port: PgPort = 5433) -> None:
    """Each part of the service: up, dead (it was started and its process is gone: `make serve` restarts it), not
    answering, or stopped; its pid and its URL or port. Exits 1 unless every part is up."""
    from flows.service import health

    svc = _service(home, port, pg_port)
    parts = health(svc)
    for part in parts:
        console.print(f"  {part.line()}", highlight=False, soft_wrap=True)
    if not all(p.ok for p in parts):
        raise typer.Exit(1)
