"""The one quiet-Prefect environment (`flows.quiet`): what it sets, and that a user's own setting wins."""

from __future__ import annotations

from flows.quiet import quiet_prefect


def test_quiet_by_default_loud_with_verbose_and_api_logs_only_when_asked():
    quiet = quiet_prefect(env={})
    assert quiet["PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"] == "WARNING"
    assert quiet["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "WARNING"
    assert quiet["PREFECT_LOGGING_LEVEL"] == "INFO"  # the UI still gets the flow's lines
    assert quiet["PREFECT_SERVER_LOGGING_LEVEL"] == "CRITICAL"
    loud = quiet_prefect(verbose=True, env={})
    assert loud["PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"] == "INFO"
    assert loud["PREFECT_SERVER_LOGGING_LEVEL"] == "WARNING"
    assert quiet_prefect(api_logs=False, env={})["PREFECT_LOGGING_LEVEL"] == "WARNING"
    assert quiet_prefect(server_level="WARNING", env={})["PREFECT_SERVER_LOGGING_LEVEL"] == "WARNING"


def test_an_exported_setting_wins():
    env = {"PREFECT_LOGGING_LEVEL": "DEBUG", "TQDM_DISABLE": "0"}
    out = quiet_prefect(env=env)
    assert out is env
    assert env["PREFECT_LOGGING_LEVEL"] == "DEBUG" and env["TQDM_DISABLE"] == "0"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
