"""Whose partial directory may go: a writer that has exited (a zombie too) leaves one that a later writer removes."""

from __future__ import annotations

import subprocess
import time

import psutil

from storage import atomic


def _zombie() -> subprocess.Popen:
    """A child that has exited and is not reaped yet: its pid still shows in the process table."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.02)
    return child


def test_a_partial_left_by_a_writer_that_exited_unreaped_is_removed(tmp_path):
    child = _zombie()
    try:
        left = tmp_path / f"store.partial-{atomic._HOST}-{child.pid}-deadbeef"
        left.mkdir()
        (left / "half.bin").write_bytes(b"x")
        atomic.partial_sibling(tmp_path / "store")
        assert not left.exists()
    finally:
        child.wait()


def test_a_live_writers_partial_stays(tmp_path):
    writer = subprocess.Popen(["sleep", "60"])
    try:
        left = tmp_path / f"store.partial-{atomic._HOST}-{writer.pid}-deadbeef"
        left.mkdir()
        atomic.partial_sibling(tmp_path / "store")
        assert left.is_dir()
    finally:
        writer.kill()
        writer.wait()
