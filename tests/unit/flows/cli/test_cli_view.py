"""The CLI's progress view: plain lines without a terminal, rich bars in one; both fed by tasks.progress."""

from __future__ import annotations

import io
import re

import pytest

from flows.cli import view
from tasks import progress


@pytest.fixture(autouse=True)
def fresh():
    progress.reset()
    yield
    view.stop()
    progress.reset()


LINE = re.compile(r"^\[sage \d\d:\d\d:\d\d\] (.+)$")


def test_plain_lines_say_when_each_stage_starts_and_ends():
    out = io.StringIO()
    with view.ProgressView(out, bars=False):
        progress.begin("locate", 12)
        for _ in range(12):
            progress.advance("locate")
        progress.end("locate")
        progress.begin("setup", 0, note="libraries")
        progress.end("setup")
    lines = out.getvalue().splitlines()
    texts = [LINE.match(ln).group(1) for ln in lines]
    assert texts[0] == "location search: 12 attributes"
    assert re.fullmatch(r"location search: done, 12 attributes in \d+\.\d s", texts[1])
    assert texts[2] == "start-up: libraries"
    assert re.fullmatch(r"start-up: done in \d+\.\d s", texts[3])
    assert len(lines) == 4, "advances print nothing: a log holds one line per stage start and end"


def test_without_a_terminal_the_view_is_plain():
    out = io.StringIO()  # not a tty
    v = view.ProgressView(out)
    assert isinstance(v.out, view.PlainLines)
    v.stop()


def test_bars_show_counts_and_finish_each_stage():
    out = io.StringIO()
    bars = view.Bars(out)
    unsubscribe = progress.subscribe(bars)
    progress.begin("score", 4)
    progress.advance("score", 3)
    task = bars.progress.tasks[0]
    assert (task.description, task.completed, task.total, task.fields["unit"]) == ("scoring", 3, 4, "units")
    progress.end("score")
    assert task.finished and task.total == 3 and "3 of 4 units" in task.description
    progress.begin("setup", 0)
    progress.end("setup")
    assert bars.progress.tasks[1].finished
    unsubscribe()
    bars.close()
    assert "scoring" in out.getvalue()


def test_stop_takes_down_the_active_view_once():
    out = io.StringIO()
    v = view.start_up("checks")
    with v:
        v.out.stream = out
        view.stop()  # what fail() does before its error line
        progress.advance("score")
        view.stop()
    assert out.getvalue() == ""


@pytest.mark.integration
def test_stage_lines_from_inside_a_flow_that_logs_prints_still_reach_stderr(prefect_harness, capsys):
    """Prefect's log_prints=True turns print(..., file=sys.stderr) inside a flow run into a log record (which the
    console then hides): the view writes its lines to the stream itself."""
    from prefect import flow

    @flow(log_prints=True)
    def staged() -> None:
        progress.begin("fit", 2)
        progress.advance("fit", 2)
        progress.end("fit")

    with view.ProgressView(bars=False):  # the stream: sys.stderr, as the CLI has it
        staged()
    err = capsys.readouterr().err
    assert "ground truth: 2 cross-sections" in err and "ground truth: done, 2 cross-sections in " in err, err
