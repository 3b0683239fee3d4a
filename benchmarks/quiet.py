"""The environment a benchmark that runs Prefect flows sets before anything imports Prefect: a throwaway PREFECT_HOME,
quiet logs and progress bars, no analytics, a patient temporary server (a busy 2-core machine starts it slowly).
Importing this module sets it (only where the caller has not)."""

from __future__ import annotations

import os
import tempfile
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sage-bench-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # local clusters' start and stop chatter
