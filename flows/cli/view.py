"""The progress view: what `tasks.progress` says, on stderr. In a terminal, one rich bar per stage with its count,
elapsed time and an estimate of the time left; anywhere else (a file, a CI log), one plain line when a stage starts
(with its size) and one when it ends (with its duration):

    [sage 02:31:07] location search: 12 attributes
    [sage 02:31:50] location search: done, 12 attributes in 43.1 s
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tasks import progress

_active: ProgressView | None = None


def stamp() -> str:
    return f"[sage {time.strftime('%H:%M:%S')}]"


def plain_line(e: progress.Event) -> str:
    return f"{stamp()} {e.label}: {progress.describe(e)}"


class PlainLines:
    """One line per stage start and end, flushed at once (a log read while the run goes on shows where it is)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, e: progress.Event) -> None:
        if e.kind != "advance":  # written, not print()ed: a flow with log_prints=True turns print() into a log record
            self.stream.write(plain_line(e) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Nothing is drawn that needs taking down."""


class Bars:
    """A rich bar per stage; a finished stage keeps its line, with its final count and duration."""

    def __init__(self, stream: TextIO):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Count(ProgressColumn):
            """'3/12 attributes'; '?' while the size is unknown; nothing for a stage without a unit."""

            def render(self, task) -> Text:
                unit = task.fields.get("unit", "")
                total = "?" if task.total is None else int(task.total)
                return Text(f"{int(task.completed)}/{total} {unit}" if unit else "", style="progress.download")

        self.progress = Progress(SpinnerColumn(finished_text="[green]done[/]"), TextColumn("{task.description}"),
                                 BarColumn(), Count(), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 console=Console(file=stream), redirect_stdout=False, redirect_stderr=False,
                                 refresh_per_second=4)
        self.ids: dict[str, int] = {}
        self.progress.start()

    def __call__(self, e: progress.Event) -> None:
        bar = self.progress
        if e.kind == "begin" or e.stage not in self.ids:
            self.ids[e.stage] = bar.add_task(e.label, total=e.total or None, completed=e.done, unit=e.unit)
        tid = self.ids[e.stage]
        if e.kind == "end":  # finished at its count (a unitless stage: a full bar); a short stage says how far it got
            n = e.done if e.unit else 1
            short = e.total is not None and e.done != e.total
            bar.update(tid, total=n, completed=n,
                       description=f"{e.label} ({progress.describe(e)})" if short else e.label)
            bar.stop_task(tid)
            del self.ids[e.stage]
        else:
            bar.update(tid, total=e.total or None, completed=e.done)

    def close(self) -> None:
        self.progress.stop()


class ProgressView:
    """Listens to `tasks.progress` for as long as a command runs; `stop()` (or leaving the `with`) takes it down."""

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None):
        stream = stream or sys.stderr
        if bars is None:
            bars = stream.isatty() and os.environ.get("TERM") != "dumb"
        self.out = Bars(stream) if bars else PlainLines(stream)
        self._unsubscribe = progress.subscribe(self.out)

    def stop(self) -> None:
        self._unsubscribe()
        self.out.close()

    def __enter__(self) -> ProgressView:
        global _active
        stop()
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        stop()


def stop() -> None:
    """Take down the view that is showing, if any (before an error line, so the line is the last thing printed)."""
    global _active
    view, _active = _active, None
    if view is not None:
        view.stop()


def start_up(note: str) -> ProgressView:
    """The view, and the run's first stage: everything before the first flow starts (libraries, the checks that need
    them, Prefect's server), ended by `prefect_env.ready`. Use it in a `with`: leaving it takes the view down."""
    stop()
    progress.reset()  # a stage left open by an earlier command in this process is not this run's
    view = ProgressView()
    progress.begin("setup", 0, note=note)
    return view
