"""A capture killed with SIGKILL mid-way resumes from its last complete chunk to a bitwise-identical store.

The killed capture and its resumption are forked from one process that imported torch and TransformerLens once
(`capture_child.py serve`): each is still a process of its own, and the one killed gets SIGKILL. The reference capture
runs alongside them in a fresh interpreter, so the resumed store is compared with one written by another interpreter
(another hash seed)."""

from __future__ import annotations

import contextlib
import json
import os
import select
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


class _Forks:
    """`capture_child.py serve`: captures forked on demand (their pid), waited for (their exit code)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.err = tmp / "serve.err"
        with open(self.err, "w") as err:  # noqa: SIM115 (the process keeps its own descriptor)
            # a session of its own: the process group (it and every capture it forked) is killed at the end
            self.proc = subprocess.Popen([sys.executable, str(CHILD), "serve"], cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)

    def _ask(self, cmd: list, timeout: float):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        assert line, f"{cmd}: no answer within {timeout} s: {self.err.read_text()[-2000:]}"
        return json.loads(line)

    def start(self, path: Path, sleep: float, tok_dir: Path) -> tuple[int, Path]:
        log = self.tmp / f"{path.name}-{time.monotonic_ns()}.log"
        return self._ask(["run", str(path), sleep, str(tok_dir), str(log)], timeout=300), log

    def wait(self, pid: int, timeout: float) -> int:
        return self._ask(["wait", pid], timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
    from storage.activations import ActivationStore
    from storage.atomic import StoreError

    forks = _Forks(tmp_path)
    ref = _run(tmp_path / "ref.zarr", 0, tmp_path / "tok-ref")  # alongside the captures forked below
    try:
        victim, _ = forks.start(tmp_path / "cut.zarr", 0.4, tmp_path / "tok")
        progress = tmp_path / "cut.zarr" / "_progress"
        deadline = time.time() + 240
        while time.time() < deadline and len(list(progress.glob("*.json")) if progress.is_dir() else []) < 3:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        assert forks.wait(victim, timeout=30) == -signal.SIGKILL
        done = len(list(progress.glob("*.json")))
        n_chunks = ActivationStore(tmp_path / "cut.zarr").n_chunks
        assert 3 <= done < n_chunks, f"kill landed after {done}/{n_chunks} chunks"
        with pytest.raises(StoreError):
            ActivationStore.open(tmp_path / "cut.zarr")  # a partial store is never read as complete

        resume, log = forks.start(tmp_path / "cut.zarr", 0, tmp_path / "tok")
        assert forks.wait(resume, timeout=300) == 0, log.read_text()[-2000:]
        assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait(timeout=30)
        forks.close()
    a, b = ActivationStore.open(tmp_path / "ref.zarr"), ActivationStore.open(tmp_path / "cut.zarr")
    assert a.content_hash() == b.content_hash()
    files = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file() and p.name != "_COMPLETE.json")
    assert files == sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file()
                           and p.name != "_COMPLETE.json")
    for rel in files:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), f"{rel} differs"
