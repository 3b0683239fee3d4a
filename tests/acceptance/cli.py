"""Running the real `sage` CLI in a subprocess, as a user does (shared by the acceptance tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAGE = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run(args, home, timeout=900, env=None):
    env = {**os.environ, **(env or {}), "SAGE_HOME": str(home)}
    return subprocess.run(SAGE + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def one_line_error(r) -> bool:
    """The CLI failed the way bad input should: a single `error: ...` line on stdout."""
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return len(lines) == 1 and lines[0].startswith("error:")
