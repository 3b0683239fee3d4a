"""Issue #16 item 7: bad arguments are refused before torch, TransformerLens, SAELens or Prefect are imported, and a
run's first progress line is written before any of them is. Each case runs the real CLI in a fresh interpreter that
reports, at exit (or at its first progress line), which of those modules it had imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
HEAVY = ("torch", "transformer_lens", "sae_lens", "prefect")

# runs `sage <args>`; at exit writes {"heavy": [...], "first_line": ...} to the file named by SAGE_TEST_REPORT
WRAPPER = f"HEAVY_NAMES = {HEAVY!r}\n" + """
import atexit, json, os, runpy, sys
HEAVY = HEAVY_NAMES
report = {"heavy": None, "heavy_at_first_line": None, "first_line": None}

def loaded():
    return sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))

def write():
    report["heavy"] = loaded()
    with open(os.environ["SAGE_TEST_REPORT"], "w") as f:
        json.dump(report, f)

class FirstLine:
    def __init__(self, inner):
        self.inner = inner
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def write(self, text):
        if report["first_line"] is None and text.startswith("[sage "):
            report["first_line"], report["heavy_at_first_line"] = text.strip(), loaded()
            if os.environ.get("SAGE_TEST_STOP_AT_FIRST_LINE"):
                write()
                os._exit(0)
        return self.inner.write(text)

atexit.register(write)
sys.stderr = FirstLine(sys.stderr)
sys.argv = ["sage", *sys.argv[1:]]
runpy.run_module("flows.cli", run_name="__main__", alter_sys=True)
"""


def sage(args, tmp_path, **env):
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "SAGE_HOME": str(tmp_path / "home"), "SAGE_TEST_REPORT": str(report),
                            **env})
    return r, json.loads(report.read_text())


@pytest.mark.parametrize("args, words", [
    (["evaluate", "--tiny", "--tasks", "ioi,nonsense"], "unknown task 'nonsense'"),
    (["evaluate", "--run", "../escape"], "invalid run name"),
    (["evaluate", "--top", "0"], "--top 0"),
    (["evaluate", "--corpus", "pile"], "give builtin, text:PATH or hf:DATASET"),
    (["evaluate", "--corpus", "hf:"], "--corpus 'hf:'"),
    (["evaluate", "--corpus-tokens", "4096"], "--corpus-tokens applies to a text: or hf: corpus"),
    (["zoo", "build", "--tasks", "iio"], "unknown task 'iio'"),
    (["capture", "--positions", "some"], "--positions some"),
    (["locate", "--tasks", "nonsense"], "unknown task 'nonsense'"),
    (["fit", "--tasks", "nonsense"], "unknown task 'nonsense'"),
    (["report", "../zoo"], "invalid run name"),
])
def test_bad_arguments_are_refused_before_any_heavy_import(tmp_path, args, words):
    r, report = sage(args, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stdout
    assert report["heavy"] == [], f"imported {report['heavy']} before refusing {args}"
    assert not (tmp_path / "home" / "zoo").exists()


def test_the_first_progress_line_comes_before_any_heavy_import(tmp_path):
    r, report = sage(["evaluate", "--tiny"], tmp_path, SAGE_TEST_STOP_AT_FIRST_LINE="1")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert report["first_line"] is not None and "start-up:" in report["first_line"], r.stderr[-2000:]
    assert report["heavy_at_first_line"] == []
