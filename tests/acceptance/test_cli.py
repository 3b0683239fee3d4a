"""The `sage` CLI end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]
SAGE = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run(args, home, timeout=600):
    env = {**os.environ, "SAGE_HOME": str(home)}
    return subprocess.run(SAGE + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_zoo_build_tiny_then_info(tmp_path):
    r = run(["zoo", "build", "--tiny"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "task performance" in r.stdout and "SAE zoo" in r.stdout and "expl. var" in r.stdout
    r = run(["zoo", "info"], tmp_path)
    assert r.returncode == 0 and "sage-test" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "ioi,nonsense"], "unknown task 'nonsense'"),
        (["--config", "{cfg}"], "exceeds the model's n_ctx=6"),
        (["--config", "{spec}"], "no hook 'blocks.9.hook_resid_post'"),
    ],
)
def test_bad_input_fails_before_training_with_one_line(tmp_path, args, message):
    from sage_core.config import ZooConfig

    tiny = ZooConfig.tiny()
    short = tiny.model_copy(update={"model": tiny.model.model_copy(update={"n_ctx": 6})})
    (tmp_path / "cfg.json").write_text(short.model_dump_json())
    spec = json.loads(tiny.model_dump_json())
    spec["saes"]["extra"] = [{"hook": "blocks.9.hook_resid_post"}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    args = [a.format(cfg=tmp_path / "cfg.json", spec=tmp_path / "spec.json") for a in args]
    r = run(["zoo", "build", "--tiny", *args], tmp_path / "home", timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert message in r.stdout and lines[-1].startswith("error:"), r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "home" / "zoo").exists(), "nothing may be trained or written for bad input"
