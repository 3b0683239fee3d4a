"""The stage lines of a `make run > log 2>&1` log, as benchmarks/fresh_run.py reads them into 'what each stage
costs'; the lines are the ones the CLI's plain view and the Makefile write."""

from __future__ import annotations

import io

import pytest

from benchmarks.fresh_run import cost_table, outside_stages, parse_stages
from flows.cli import view
from tasks import progress

SAMPLE = """\
[sage 23:59:00] install: torch, SAGE and its dependencies into .venv
no CUDA: installing torch==2.13.0 (CPU build)
installing SAGE and its dependencies into .venv ...
[sage 23:59:50] install: done in 50.2 s
SAGE_HOME=./sage-data .venv/bin/sage evaluate --top 12
[sage 23:59:51] start-up: libraries, the input checks, Prefect's server
[sage 00:00:05] start-up: done in 14.0 s
[sage 00:00:06] zoo: model training: 2000 steps
[sage 00:03:10] zoo: model training: done, 2000 steps in 184.3 s
[sage 00:03:11] zoo: SAEs trained: 24 SAEs
00:03:40.100 | WARNING | Task run 'x' - something: with a colon
[sage 00:05:11] zoo: SAEs trained: done, 24 SAEs in 120.0 s
[sage 00:05:12] scoring: 40 units
[sage 00:05:12] core metrics: 24 SAEs
[sage 00:06:00] core metrics: done, 24 SAEs in 48.0 s
[sage 00:06:12] scoring: done, 38 of 40 units in 60.0 s
evaluated in 381.0s; report: sage-data/reports/x/README.md
"""


def test_stages_are_read_with_their_size_and_duration_across_midnight():
    stages = parse_stages(SAMPLE)
    assert [(s.label, s.size, s.seconds) for s in stages] == [
        ("install", "", 50.2), ("start-up", "", 14.0), ("zoo: model training", "2000 steps", 184.3),
        ("zoo: SAEs trained", "24 SAEs", 120.0), ("core metrics", "24 SAEs", 48.0),
        ("scoring", "38 of 40 units", 60.0)]
    assert stages[-1].ended == 7 * 60 + 12  # seconds after the first stage line, past midnight


def test_time_outside_stages_counts_overlapping_stages_once():
    stages = parse_stages(SAMPLE)
    # covered: install 50.2 + start-up 14 + model 184.3 + SAEs 120 + scoring and core metrics (overlapping) 60
    assert outside_stages(stages, wall=440.0) == pytest.approx(440.0 - (50.2 + 14 + 184.3 + 120 + 60), abs=1e-6)
    table = cost_table(stages, wall=440.0)
    assert table[0].startswith("| stage | size | seconds |") and len(table) == 2 + len(stages) + 1
    assert "| zoo: model training | 2000 steps | 184.3 | 42% |" in table


def test_the_views_own_lines_parse():
    out = io.StringIO()
    progress.reset()
    with view.ProgressView(out, bars=False):
        progress.begin("locate", 12)
        progress.advance("locate", 12)
        progress.end("locate")
    progress.reset()
    [stage] = parse_stages(out.getvalue())
    assert stage.label == "location search" and stage.size == "12 attributes" and stage.seconds < 5
