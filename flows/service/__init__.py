"""The standing service (`make serve`, `sage serve`): PostgreSQL with its data under SAGE_HOME, the Prefect server on
it, the work pool, the deployments of prefect.yaml and one process worker, all on 127.0.0.1 with analytics off.

Nobody but the service's owner runs code through it: the Prefect API asks for a password (Prefect's server API
authentication; the secret in SAGE_HOME/service/api.secret, 0600, and in the service's own Prefect profile, 0600); the
work pool's base job template takes no job variable that changes what a flow run runs (no environment, command or
working directory from a deployment or a flow run: the worker's own environment is the flow run's); whether `py:`
SAE specs may run code is the worker's own setting (`--allow-py-specs`), never a flow run's; and when root starts it,
the worker and its flow runs run as an unprivileged service user (service_user.py), as PostgreSQL runs as `postgres`.

Each process runs in its own session, recorded (pid and kernel start time: a reused pid is never taken for it) in
SAGE_HOME/service/<name>.pid; `stop` ends them by those pids: worker (and its flow runs), server, PostgreSQL.

Modules: config (the Service and its environment), processes (pid records, spawn, stop), postgres, server (the
Prefect server, its password, pool and deployments), service_user, worker (and the runs it left behind), state
(`make serve-status`), lifecycle (`make serve`), rest (the API as the owner), files (private files).
"""

from flows.service.config import (
                                  API_PORT,
                                  API_USER,
                                  DB_NAME,
                                  DB_USER,
                                  HOST,
                                  PG_PORT,
                                  POOL,
                                  PY_SPECS_ENV,
                                  REPO,
                                  SERVICE_USER,
                                  SERVICE_USER_ENV,
                                  STOP_ORDER,
                                  Service,
                                  ServiceError,
)
from flows.service.lifecycle import start
from flows.service.postgres import pg_bin, start_postgres
from flows.service.processes import _check_port, _descendants, _spawn, _start_time, recorded, status, stop
from flows.service.rest import api
from flows.service.server import create_pool, deploy, ensure_auth, pool_template, prefect_cli, start_server
from flows.service.service_user import (
                                  check_runnable,
                                  hand_over,
                                  service_account,
                                  stop_a_worker_of_another_user,
                                  worker_env,
)
from flows.service.state import Health, health
from flows.service.worker import ACTIVE_STATES, crash_orphaned_runs, start_worker

__all__ = ["ACTIVE_STATES", "API_PORT", "API_USER", "DB_NAME", "DB_USER", "HOST", "PG_PORT", "POOL", "PY_SPECS_ENV",
           "REPO", "SERVICE_USER", "SERVICE_USER_ENV", "STOP_ORDER", "Health", "Service", "ServiceError", "_check_port",
           "_descendants", "_spawn", "_start_time", "api", "check_runnable", "crash_orphaned_runs", "create_pool",
           "deploy", "ensure_auth", "hand_over", "health", "pg_bin", "pool_template", "prefect_cli", "recorded",
           "service_account", "start", "stop_a_worker_of_another_user", "start_postgres", "start_server", "start_worker", "status", "stop",
           "worker_env"]
