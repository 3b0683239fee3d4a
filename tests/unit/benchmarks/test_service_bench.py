"""The pure parts of benchmarks/service.py (ratios, parsing, formatting) against figures computed by hand; the run
itself is the benchmark's (it starts the whole service)."""

from __future__ import annotations

import pytest

from benchmarks.service import (
    drop_prefect,
    flow_run_times,
    locked_counts,
    median_or_none,
    median_ratio,
    paired_ratios,
    rounds_line,
    seconds,
    steps_line,
    watch_counts,
)


def test_ratios_are_taken_within_each_round_then_the_median():
    # nothing new 20, 30, 12 s against one new SAE 40, 50, 48 s: 0.5, 0.6, 0.25 -> median 0.5
    assert paired_ratios([20.0, 30.0, 12.0], [40.0, 50.0, 48.0]) == pytest.approx([0.5, 0.6, 0.25])
    assert median_ratio([20.0, 30.0, 12.0], [40.0, 50.0, 48.0]) == pytest.approx(0.5)
    # two rounds: the median is their mean, (0.5 + 0.6) / 2
    assert median_ratio([20.0, 30.0], [40.0, 50.0]) == pytest.approx(0.55)
    # not the ratio of the medians: median(20, 30, 12) / median(40, 50, 48) = 20 / 48
    assert median_ratio([20.0, 30.0, 12.0], [40.0, 50.0, 48.0]) != pytest.approx(20 / 48)


@pytest.mark.parametrize("numer, denom", [([1.0], [1.0, 2.0]), ([], []), ([1.0], [0.0]), ([1.0, 2.0], [3.0, -1.0])])
def test_unpaired_or_empty_or_zero_baselines_are_refused(numer, denom):
    with pytest.raises(ValueError):
        paired_ratios(numer, denom)


def test_watch_counts_from_the_flow_log():
    log = "Beginning flow run\nwatch: 3 SAE(s) listed, 1 new\nevaluate: ...\n"
    assert watch_counts(log) == (3, 1)
    assert watch_counts("watch: 12 SAE(s) listed, 0 new (dry run: nothing evaluated)") == (12, 0)
    with pytest.raises(ValueError, match="no `watch: N SAE"):
        watch_counts("Finished in state Completed()")


def test_locked_counts_per_log():
    logs = {"server.log": "ok\nsqlite3.OperationalError: database is locked\nagain: database is locked\n",
            "postgres.log": "LOG:  database system is ready", "worker.log": ""}
    assert locked_counts(logs) == {"postgres.log": 0, "server.log": 2, "worker.log": 0}


def test_every_prefect_setting_is_dropped_and_nothing_else():
    env = {"PREFECT_API_URL": "http://x/api", "PREFECT_HOME": "/p", "PATH": "/bin", "SAGE_HOME": "/h",
           "MY_PREFECT_NOTE": "kept"}
    assert drop_prefect(env) == {"PATH": "/bin", "SAGE_HOME": "/h", "MY_PREFECT_NOTE": "kept"}


def test_flow_run_times_from_the_servers_timestamps():
    run = {"expected_start_time": "2026-01-01T10:00:00Z", "start_time": "2026-01-01T10:00:04.5+00:00",
           "end_time": "2026-01-01T10:00:34.5+00:00"}
    assert flow_run_times(run) == (pytest.approx(4.5), pytest.approx(30.0))
    assert flow_run_times({"expected_start_time": "2026-01-01T10:00:00Z", "start_time": None}) == (None, None)


def test_formatting():
    assert seconds(3.14159) == "3.1 s" and seconds(None) == "n/a"
    # 2.0 + 10.25 + 0.5 = 12.75 -> "12.8 s"
    assert steps_line({"postgres": 2.0, "server": 10.25, "worker": 0.5}) == \
        "postgres 2.0 s, server 10.2 s, worker 0.5 s; total 12.8 s"
    assert rounds_line([0.5, 0.625], "{:.2f}") == "0.50, 0.62"
    assert median_or_none([3.0, 1.0, 2.0]) == 2.0
    assert median_or_none([3.0, None]) is None and median_or_none([]) is None
