"""Running the real `sage` CLI in a subprocess, as a user does (shared by the acceptance tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAGE = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]


# the session's Prefect test server (set by tests/acceptance/conftest.py): a CLI run given PREFECT_API_URL uses it
# instead of starting a temporary server of its own, ~10 s a run on this machine. Runs that test the temporary
# server itself (kill -9 leaves none behind) start the CLI without it.
API_URL: str | None = None


def seed_zoo(tiny_zoo, home: Path) -> Path:
    """`home` holding a copy of the session's tiny zoo (its model, SAEs, datasets and corpus): a CLI run there finds
    the zoo whole by content and reuses it, so a test costs its own command, not a zoo build. `tests/acceptance/
    test_cli.py` builds one through the CLI itself."""
    import shutil

    for part in ("zoo", "datasets"):
        shutil.copytree(tiny_zoo[0] / part, home / part)
    return home


def run(args, home, timeout=900, env=None):
    env = {**os.environ, **({"PREFECT_API_URL": API_URL} if API_URL else {}), **(env or {}), "SAGE_HOME": str(home)}
    return subprocess.run(SAGE + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def run_in_process(args, home, env=None):
    """The CLI in this process (typer's runner), for argument checks that must fail before any import of torch or
    Prefect work: a subprocess would spend most of its time importing. The environment the CLI sets is restored."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from flows.cli import app

    saved = dict(os.environ)
    try:
        r = CliRunner().invoke(app, args, env={**(env or {}), "SAGE_HOME": str(home)}, catch_exceptions=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def one_line_error(r) -> bool:
    """The CLI failed the way bad input should: a single `error: ...` line on stdout."""
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return len(lines) == 1 and lines[0].startswith("error:")
