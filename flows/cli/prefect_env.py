"""Prefect as the CLI runs it: logs (INFO to the Prefect API, so the UI shows them; the console only warnings unless
--verbose, and no tracebacks there), and the temporary Prefect server tied to this process's life.

`environment` must run before anything imports Prefect (its settings and logging are read at import); `ready` starts
the server and ends the start-up stage, just before the first flow runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from flows.cli.options import console, refused
from flows.quiet import quiet_prefect
from tasks import progress


def environment(verbose: bool) -> None:
    """Prefect's settings for a CLI run; a setting the user exported wins."""
    import warnings

    warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
    quiet_prefect(verbose)

@contextmanager
def flow_command(verbose: bool, what: str) -> Iterator[Callable[[str, str], None]]:
    """Every flow-running command's prelude: Prefect's environment (before anything imports Prefect), then the
    start-up stage in the progress view (`what` it loads). Yields `start(cluster, device)`: the cluster's checks in one
    line, then Prefect's server; the command calls it when its own input checks have passed. A command that ends
    before it (a dry run) starts no server."""
    from flows.cli import view

    environment(verbose)
    with view.start_up(what):

        def start(cluster: str, device: str) -> None:
            from flows.engine import check_cluster

            with refused():
                check_cluster(cluster, device)
            ready(verbose)

        yield start


def ready(verbose: bool) -> None:
    """Before the first flow: tracebacks off the console, the temporary server started and tied to this process; the
    start-up stage ends here."""
    _console_without_tracebacks(verbose)
    with refused():  # a server that cannot start: one line
        try:
            _server_dies_with_cli()
        except (AttributeError, TypeError, ImportError) as exc:
            # it leans on Prefect internals; where they differ, Prefect starts (and at exit stops) its server itself
            console.print(f"[yellow]note:[/] the temporary Prefect server is not tied to this process ({exc}); a "
                          "kill -9 may leave it running")
    progress.end("setup")


class _NoTracebackFormatter:
    """Wraps the console handler's formatter: the record's first line, no traceback. The UI's handler (APILogHandler)
    runs first on the same record and still sends the traceback; the record is restored afterwards."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def format(self, record):
        import logging

        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            text = (self.inner or logging.Formatter()).format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return text.splitlines()[0] if text else text


def _console_without_tracebacks(verbose: bool) -> None:
    """Prefect logs every failed task with its full traceback on the console; without --verbose the console keeps one
    line per failure (the CLI lists the failures itself), while the Prefect UI still gets the tracebacks."""
    if verbose:
        return
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for name in (None, "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTracebackFormatter):
                handler.setFormatter(_NoTracebackFormatter(handler.formatter))


# The temporary Prefect server (uvicorn) is a child of this process; started as Prefect starts it, it outlives a
# `kill -9` of the CLI. This launcher asks Linux to SIGTERM it when its parent dies, then runs uvicorn as `-m` would.
_DEATHSIG_LAUNCHER = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the parent died before prctl took effect\n"
    "sys.argv = ['uvicorn', *sys.argv[2:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def _server_dies_with_cli() -> None:
    """Start Prefect's temporary server now, from the main thread (the thread PR_SET_PDEATHSIG watches), through the
    launcher above; Prefect reuses this one instance for the whole run. Nothing to do when PREFECT_API_URL names a
    server, or off Linux (the server then stops only through Prefect's atexit hook)."""
    if not sys.platform.startswith("linux"):
        return
    from prefect.server.api import server as srv
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    instance = srv.SubprocessASGIServer()
    if instance.running:
        return
    plain = instance._run_uvicorn_command
    real_popen = srv.subprocess.Popen

    def popen(args, **kw):
        if list(args[:3]) == [sys.executable, "-m", "uvicorn"]:
            args = [sys.executable, "-c", _DEATHSIG_LAUNCHER, str(os.getpid()), *args[3:]]
        return real_popen(args, **kw)

    def run_uvicorn():
        saved = srv.subprocess
        srv.subprocess = SimpleNamespace(Popen=popen)  # only server.py's name, only for this call
        try:
            return plain()
        finally:
            srv.subprocess = saved

    instance._run_uvicorn_command = run_uvicorn
    instance.start()
