"""What the service is: its ports, pool, data root and the environment its Prefect processes run with."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flows.quiet import quiet_prefect
from storage.home import SageHome

HOST = "127.0.0.1"
API_PORT = 4200
PG_PORT = 5433  # not 5432: a system cluster may hold that one
POOL = "sage-process"
DB_USER = "sage"
DB_NAME = "prefect"
STOP_ORDER = ("worker", "server", "postgres")
API_USER = "sage"
SERVICE_USER = "sage"  # the worker's user when root starts the service (SAGE_SERVICE_USER names another)
SERVICE_USER_ENV = "SAGE_SERVICE_USER"
PY_SPECS_ENV = "SAGE_ALLOW_PY_SPECS"  # storage.py_specs.PY_SPECS_ENV (not imported: the service imports little)
REPO = Path(__file__).resolve().parents[2]


class ServiceError(RuntimeError):
    """A step of the service that could not run; the message is one line that says what to do."""


def _service_user() -> str:
    return os.environ.get(SERVICE_USER_ENV) or SERVICE_USER


@dataclass(frozen=True)
class Service:
    home: SageHome
    api_port: int = API_PORT
    pg_port: int = PG_PORT
    pool: str = POOL
    deployments: tuple[str, ...] = ()  # names for `prefect deploy -n`; none: every deployment (--all)
    worker_limit: int | None = 1  # one flow run at a time: the runs share this machine's cores (or its GPU)
    allow_py_specs: bool = False  # the worker's own setting: may `py:` SAE specs import and run code in its flow runs
    service_user: str = field(default_factory=_service_user)  # the worker's user when we are root
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
    def worker_home(self) -> Path:
        """The worker's HOME (and its PREFECT_HOME below it) when it runs as the service user: its own, so no file
        that root's Prefect processes read (a profile can name a logging config, i.e. code) is the worker's to write."""
        return self.dir / "worker-home"

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
        # the worker's console is worker.log: each flow run's own lines stay in it
        env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO")
        # the project's one quiet environment: task runs' INFO chatter held back (progress lives in the progress
        # artifacts); the server's errors still reach server.log, its access lines not
        return dict(quiet_prefect(server_level="WARNING", env=env))
