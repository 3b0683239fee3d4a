"""The one "quiet Prefect" environment every entry point sets before anything imports Prefect (its settings and
logging are read at import): the CLI, the standing service's worker, the benchmarks and the tests. Stdlib only.

A run's progress lives in the progress artifacts and its results in the flow's own log lines, so Prefect's own INFO
chatter (a task run's "Finished in state Completed()", two per progress hook) is held back; warnings and errors stay.
A setting the user exported wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def quiet_prefect(verbose: bool = False, api_logs: bool = True, server_level: str = "CRITICAL",
                  env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set (where unset) the quiet settings in `env` (default: this process's environment) and return it.

    `api_logs`: flow and task run logs at INFO reach Prefect's API (the UI shows them); off for benchmarks and tests,
    which read no logs. `server_level`: the server's own log level (the CLI's temporary server logs its shutdown races
    as errors and, at INFO, one access line per API call: neither is the run's); `verbose` lifts the console, task run
    and server levels to INFO / WARNING."""
    env = os.environ if env is None else env
    settings = {
        "PREFECT_LOGGING_LEVEL": "INFO" if api_logs else "WARNING",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO" if verbose else "WARNING",
        "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO" if verbose else "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING" if verbose else server_level,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # the temporary local server can take >20 s to start on a busy 2-core machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "TQDM_DISABLE": "1",  # SAELens' per-SAE bars interleave badly across parallel tasks
        "DASK_LOGGING__DISTRIBUTED": "warning",  # local clusters' start and stop chatter
    }
    for name, value in settings.items():
        env.setdefault(name, value)
    return env
