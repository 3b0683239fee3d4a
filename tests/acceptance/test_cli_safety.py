"""Bad input to the `sage` CLI, tried as a new user would (issue #15 items 2, 9, 12, 13): each ends in one `error:`
line whose advice works, before any compute, with nothing lost. No zoo is needed: every case fails in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.acceptance.cli import ROOT, SAGE, one_line_error, run_in_process

pytestmark = [pytest.mark.acceptance]

FAST = 150  # seconds: argument checks answer in a few; the old code ran the whole flow instead


def _zoo_sentinel(home: Path) -> Path:
    f = home / "zoo" / "sage-test" / "saes" / "keep" / "sae_weights.safetensors"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"trained weights")
    return f


@pytest.mark.parametrize("name", ["../zoo", "/abs/run", "parts"])
def test_run_names_that_escape_or_collide_are_refused(tmp_path, name):
    home = tmp_path / "home"
    keep = _zoo_sentinel(home)
    r = run_in_process(["evaluate", "--tiny", "--run", name], home)
    assert r.returncode == 2 and one_line_error(r) and "--run" in r.stdout, r.stdout + r.stderr[-2000:]
    assert keep.read_bytes() == b"trained weights"
    assert sorted(p.name for p in home.iterdir()) == ["zoo"], "nothing may be written for a bad run name"


def test_report_of_an_escaping_run_name_is_refused(tmp_path):
    r = run_in_process(["report", "../zoo"], tmp_path / "home")
    assert r.returncode == 2 and one_line_error(r) and "--run" in r.stdout, r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("cmd", [["evaluate", "--tiny", "--top", "-1"], ["report", "--top", "0"]])
def test_top_below_one_is_refused(tmp_path, cmd):
    r = run_in_process(cmd, tmp_path / "home")
    assert r.returncode == 2 and one_line_error(r) and "--top" in r.stdout, r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "home" / "zoo").exists()


@pytest.mark.parametrize("cmd", [["evaluate", "--tiny"], ["zoo", "build", "--tiny"]])
def test_a_data_root_that_is_a_file_fails_before_any_compute(tmp_path, cmd):
    home = tmp_path / "home"
    home.write_text("a file, not a directory")
    r = run_in_process(cmd, home)
    assert r.returncode == 2 and one_line_error(r), r.stdout + r.stderr[-2000:]
    assert "is a file, not a directory; set SAGE_HOME" in r.stdout and "Traceback" not in r.stderr
    assert home.read_text() == "a file, not a directory"


def test_a_spec_that_names_nothing_fails_before_any_work(tmp_path):
    home = tmp_path / "home"
    r = run_in_process(["evaluate", "--tiny", "--saes", "zoo:nope"], home)
    assert r.returncode == 2 and one_line_error(r), r.stdout + r.stderr[-2000:]
    assert "zoo SAE sage-test/nope does not exist" in r.stdout and "sage zoo info" in r.stdout
    assert not (home / "zoo").exists(), "the zoo must not be built for a spec that names nothing"


def test_py_specs_typed_on_the_command_line_are_allowed_to_load(tmp_path):
    """The CLI allows the code its user named: the check reaches the module lookup (not the permission)."""
    r = run_in_process(["evaluate", "--tiny", "--saes", "py:no_such_module_anywhere:make"], tmp_path / "home",
                       env={"SAGE_ALLOW_PY_SPECS": ""})
    assert r.returncode == 2 and one_line_error(r), r.stdout + r.stderr[-2000:]
    assert "cannot find module 'no_such_module_anywhere'" in r.stdout and "SAGE_ALLOW_PY_SPECS" not in r.stdout


@pytest.mark.parametrize("model", ["Qwen/Qwen-1_8B", "microsoft/phi-1"])
def test_a_model_that_runs_remote_code_needs_the_flag(tmp_path, model):
    home = tmp_path / "home"
    r = run_in_process(["evaluate", "--model", model, "--saes", "no-such-release/x"], home)
    assert r.returncode == 2 and one_line_error(r) and "--trust-remote-code" in r.stdout, r.stdout + r.stderr[-2000:]
    # with the flag the model check passes; the next check (the SAE spec) answers, still before any download
    r = run_in_process(["evaluate", "--model", model, "--trust-remote-code", "--saes", "no-such-release/x"], home)
    assert r.returncode == 2 and one_line_error(r) and "unknown SAELens release 'no-such-release'" in r.stdout, \
        r.stdout + r.stderr[-2000:]
    assert not (home / "zoo").exists()


def test_remote_code_names_follow_transformer_lens():
    from sage_core.model.pretrained import remote_code_name

    assert remote_code_name("Qwen/Qwen-7B") == "Qwen/Qwen-7B"
    assert remote_code_name("microsoft/phi-1_5") == "microsoft/phi-1_5"
    assert remote_code_name("gpt2") is None and remote_code_name("Qwen/Qwen2-0.5B") is None


def test_exit_codes_are_documented():
    r = subprocess.run(SAGE + ["evaluate", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=FAST,
                       env={**os.environ, "COLUMNS": "200"})
    text = " ".join(r.stdout.split())
    assert "Exit codes: 0 done; 2 bad input" in text and "3 finished, but some SAEs or stages failed" in text
    assert "IMPORTS AND RUNS" in text and "--trust-remote-code" in text


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _is_server(pid: int) -> bool:
    try:
        return b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_kill_9_of_evaluate_leaves_no_prefect_server(tmp_path):
    env = {**os.environ, "SAGE_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    cli = subprocess.Popen(SAGE + ["evaluate", "--tiny", "--tasks", "ioi"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 240
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            server = next((c for c in _children(cli.pid) if _is_server(c)), None)
            time.sleep(0.2)
        assert server is not None, "the CLI started no temporary Prefect server"
        time.sleep(3)  # well into its start-up
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 15
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server), f"the temporary Prefect server (pid {server}) outlived kill -9 of the CLI"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if server is not None and _alive(server) and _is_server(server):
            os.kill(server, signal.SIGKILL)  # the orphan this test looks for: stopped by its PID


@pytest.mark.parametrize(("cmd", "option", "value"), [
    *[(cmd, "--cluster", "locall:2") for cmd in (["evaluate"], ["zoo", "build"], ["locate"], ["fit"], ["capture"])],
    (["evaluate"], "--cluster", "local:0"), (["evaluate"], "--device", "cuda:3"), (["fit"], "--device", "tpu")])
def test_a_bad_engine_or_device_is_refused_before_any_work(tmp_path, cmd, option, value):
    home = tmp_path / "home"
    keep = _zoo_sentinel(home)
    r = run_in_process([*cmd, "--tiny", option, value], home)
    assert r.returncode == 2 and one_line_error(r) and option in r.stdout, r.stdout + r.stderr[-2000:]
    assert keep.read_bytes() == b"trained weights"
    assert sorted(p.name for p in home.iterdir()) == ["zoo"], "nothing may be written for a bad engine"
