"""The CLI's shared options: comma lists, one-line errors and their exit code, the light checks."""

from __future__ import annotations

import typing

import pytest
import typer

from flows.cli import options
from flows.cli.capture import DTYPES, POSITIONS, check_choices


@pytest.mark.parametrize("text, expected", [
    (None, None), ("", None), (" , ,", None), ("ioi", ("ioi",)), (" ioi, sva ,,greater_than", ("ioi", "sva",
                                                                                              "greater_than")),
])
def test_comma_list(text, expected):
    assert options.comma_list(text) == expected


def test_one_line_joins_a_multiline_message_and_names_a_validation_errors_field():
    from pydantic import BaseModel, Field, ValidationError

    assert options.one_line(ValueError("first\n   second  line")) == "first second line"
    assert options.one_line(RuntimeError()) == "RuntimeError"

    class M(BaseModel):
        n: int = Field(ge=1)

    with pytest.raises(ValidationError) as err:
        M(n=0)
    assert options.one_line(err.value) == "n: Input should be greater than or equal to 1"


def test_fail_prints_one_error_line_and_exits_2(capsys):
    with pytest.raises(typer.Exit) as ex:
        options.fail(ValueError("bad\nthing"))
    assert ex.value.exit_code == options.EXIT_BAD_INPUT == 2
    assert capsys.readouterr().out.strip().splitlines() == ["error: bad thing"]


def test_refused_turns_sage_errors_into_the_error_line(capsys):
    for exc in (ValueError("v"), RuntimeError("r"), FileNotFoundError("f")):
        with pytest.raises(typer.Exit), options.refused():
            raise exc
    assert capsys.readouterr().out.split() == ["error:", "v", "error:", "r", "error:", "f"]
    with pytest.raises(KeyError), options.refused():  # a bug is not bad input: it is not dressed up as one
        raise KeyError("k")


def test_light_checks(capsys):
    options.check_top(None)
    options.check_top(1)
    options.check_tasks(("ioi", "sva"))
    options.check_run("nightly-1")
    for check, arg, words in [(options.check_top, 0, "--top 0"), (options.check_tasks, ("ioi", "iio"), "'iio'"),
                              (options.check_run, "../x", "invalid run name")]:
        with pytest.raises(typer.Exit):
            check(arg)
        assert words in capsys.readouterr().out


def test_capture_choices_are_the_capture_requests_own():
    """The CLI checks --positions and --dtype before torch loads, with the same choices CaptureRequest accepts."""
    from sage_core.model.capture import CaptureRequest

    fields = CaptureRequest.model_fields
    assert typing.get_args(fields["positions"].annotation) == POSITIONS
    assert typing.get_args(fields["dtype"].annotation) == DTYPES
    check_choices("roles", "bfloat16")
    with pytest.raises(typer.Exit):
        check_choices("some", "float32")


def test_cli_runs_send_info_logs_to_the_prefect_api_and_keep_the_console_quiet():
    """Issue #16 item 6: the API handler (the UI) gets the flow's INFO records; the console handler only warnings,
    unless -v. Issue #26 item 4: task runs send warnings only (their INFO lines were state changes and progress hooks),
    INFO again with -v."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, logging, sys\n"
            "from flows.cli import prefect_env\n"
            "prefect_env.environment(sys.argv[1] == 'v')\n"
            "from prefect.logging.configuration import setup_logging\n"
            "setup_logging()\n"
            "def levels(name):\n"
            "    lg = logging.getLogger(name)\n"
            "    return [lg.getEffectiveLevel(), {type(h).__name__: h.level for h in lg.handlers}]\n"
            "print(json.dumps({n: levels(n) for n in ('root', 'prefect.flow_runs', 'prefect.task_runs')}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    quiet, loud = (json.loads(subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True,
                                             env=env, check=True).stdout) for flag in ("", "v"))
    for run_logger, want in (("prefect.flow_runs", 20), ("prefect.task_runs", 30)):
        level, handlers = quiet[run_logger]
        assert level == want and handlers == {"APILogHandler": 0}, quiet  # the flow's INFO records reach the API
    assert loud["prefect.task_runs"][0] == 20, loud
    assert quiet["root"][1] == {"PrefectConsoleHandler": 30}, quiet  # the console: warnings and errors only
    assert loud["root"][1] == {"PrefectConsoleHandler": 20}, loud
