"""Prefect as the CLI runs it: logs (INFO to the Prefect API, so the UI shows them; the console only warnings unless
--verbose, and no tracebacks there), and the temporary Prefect server tied to this process's life.

`environment` must run before anything imports Prefect (its settings and logging are read at import); `ready` starts
the server and ends the start-up stage, just before the first flow runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flows.cli.options import console, refused
from flows.prefect_internals import server_dies_with_this_process
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
            server_dies_with_this_process()
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
