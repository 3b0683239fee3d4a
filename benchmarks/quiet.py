"""The environment a benchmark that runs Prefect flows sets before anything imports Prefect: a throwaway PREFECT_HOME,
quiet logs and progress bars, no analytics, a patient temporary server (a busy 2-core machine starts it slowly).
Importing this module sets it (only where the caller has not)."""

from __future__ import annotations

import os
import tempfile
import warnings

from flows.quiet import quiet_prefect

warnings.filterwarnings("ignore")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sage-bench-prefect-"))
quiet_prefect(api_logs=False)
