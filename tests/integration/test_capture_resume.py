"""A capture killed with SIGKILL mid-way resumes from its last complete chunk to a bitwise-identical store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHILD = Path(__file__).with_name("capture_child.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(path, sleep, tok_dir):
    return subprocess.Popen([sys.executable, str(CHILD), str(path), str(sleep), str(tok_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
    from storage.activations import ActivationStore
    from storage.atomic import StoreError

    ref = _run(tmp_path / "ref.zarr", 0, tmp_path / "tok")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]

    victim = _run(tmp_path / "cut.zarr", 0.4, tmp_path / "tok")
    progress = tmp_path / "cut.zarr" / "_progress"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(progress.glob("*.json")) if progress.is_dir() else []) < 3:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    done = len(list(progress.glob("*.json")))
    n_chunks = ActivationStore(tmp_path / "cut.zarr").n_chunks
    assert 3 <= done < n_chunks, f"kill landed after {done}/{n_chunks} chunks"
    with pytest.raises(StoreError):
        ActivationStore.open(tmp_path / "cut.zarr")  # a partial store is never read as complete

    resume = _run(tmp_path / "cut.zarr", 0, tmp_path / "tok")
    assert resume.wait(timeout=300) == 0, resume.stderr.read()[-2000:]
    a, b = ActivationStore.open(tmp_path / "ref.zarr"), ActivationStore.open(tmp_path / "cut.zarr")
    assert a.content_hash() == b.content_hash()
    files = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file() and p.name != "_COMPLETE.json")
    assert files == sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file()
                           and p.name != "_COMPLETE.json")
    for rel in files:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), f"{rel} differs"
