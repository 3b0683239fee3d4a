"""Every durable file is covered by checksums recorded when written and checked when read (issue #15 item 12)."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from storage import atomic
from storage.atomic import MARKER, StoreError, is_complete, is_whole, read_marker, verify_dir, verify_file, write_once


def _flip(path: Path, at: int | None = None, n: int = 3) -> None:
    """Flip `n` bytes in the middle of a file (keeping its size)."""
    b = bytearray(path.read_bytes())
    at = len(b) // 2 if at is None else at
    for k in range(n):
        b[at + k] ^= 0xFF
    path.write_bytes(bytes(b))


def _truncate(path: Path, keep: float = 0.5) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def _dir(final: Path, **kw) -> Path:
    with write_once(final, **kw) as tmp:
        (tmp / "a.bin").write_bytes(bytes(range(256)) * 40)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("hello")
    return final


# -- the marker records every file ------------------------------------------------------------------------------------
def test_marker_records_size_and_digest_of_every_file(tmp_path):
    d = _dir(tmp_path / "d", kind="thing")
    m = read_marker(d)
    assert m["kind"] == "thing"
    assert set(m["files"]) == {"a.bin", "sub/b.txt"}
    assert m["files"]["a.bin"]["size"] == 256 * 40
    assert m["files"]["sub/b.txt"]["digest"] == atomic.file_digest(d / "sub" / "b.txt")
    verify_dir(d)
    assert is_whole(d) and is_complete(d)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_dir_names_the_damaged_file_in_one_line(tmp_path, damage):
    d = _dir(tmp_path / "d")
    f = d / "a.bin"
    {"flip": _flip, "truncate": _truncate, "delete": Path.unlink}[damage](f)
    with pytest.raises(StoreError) as e:
        verify_dir(d)
    msg = _one_line(e)
    assert str(f) in msg and "rerun" in msg
    assert not is_whole(d) and not is_complete(d)
    with pytest.raises(StoreError, match="a.bin"):
        verify_file(f)
    verify_file(d / "sub" / "b.txt")  # the other file is fine


def test_a_marker_without_a_file_list_is_not_whole_and_is_rebuilt(tmp_path):
    """Markers written before this change list no files: they count as not whole, and the next write replaces them."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.bin").write_bytes(b"old")
    (d / MARKER).write_text(json.dumps({"written_at": 0}))
    with pytest.raises(StoreError, match="before SAGE recorded checksums"):
        verify_dir(d)
    assert not is_complete(d)
    with write_once(d) as tmp:
        (tmp / "a.bin").write_bytes(b"new")
    assert is_whole(d) and (d / "a.bin").read_bytes() == b"new"


def test_a_damaged_directory_is_rewritten_by_the_next_write(tmp_path):
    d = _dir(tmp_path / "d")
    _flip(d / "a.bin")
    assert not is_complete(d)
    _dir(d)  # what a stage's `if not is_complete(d): with write_once(d) ...` does
    assert is_whole(d)


def test_verification_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    d = _dir(tmp_path / "d")
    calls = []
    real = atomic.xxhash.xxh3_128
    monkeypatch.setattr(atomic.xxhash, "xxh3_128", lambda *a: calls.append(1) or real(*a))
    atomic._digests.clear()
    for _ in range(5):
        verify_file(d / "a.bin")
    assert len(calls) == 1, "the same unchanged file is hashed once per process"
    time.sleep(0.01)
    _flip(d / "a.bin")
    os.utime(d / "a.bin", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(StoreError, match="checksum mismatch"):
        verify_file(d / "a.bin")


def test_verify_file_refuses_a_file_the_marker_does_not_list(tmp_path):
    d = _dir(tmp_path / "d")
    (d / "extra.txt").write_text("x")
    with pytest.raises(StoreError, match="not among the files"):
        verify_file(d / "extra.txt")


# -- replacing --------------------------------------------------------------------------------------------------------
def test_replace_never_deletes_a_complete_directory_of_another_kind(tmp_path):
    d = _dir(tmp_path / "d", kind="sae")
    with pytest.raises(StoreError) as e:
        with write_once(d, {"run": "r"}, replace=True, kind="scores-run") as tmp:
            (tmp / "scores.parquet").write_bytes(b"x")
    assert "'sae'" in _one_line(e)
    assert is_whole(d) and read_marker(d)["kind"] == "sae"
    assert not list(tmp_path.glob("d.partial-*")) and not list(tmp_path.glob("d.stale-*"))
    with write_once(d, replace=True, kind="sae") as tmp:  # the same kind is replaced
        (tmp / "a.bin").write_bytes(b"fresh")
    assert (d / "a.bin").read_bytes() == b"fresh" and is_whole(d)


def test_a_directory_holding_complete_results_is_never_replaced(tmp_path):
    """`scores/../zoo` was the zoo root: no marker of its own, complete SAEs inside."""
    zoo = tmp_path / "zoo"
    sae = _dir(zoo / "m" / "saes" / "s", kind="sae")
    with pytest.raises(StoreError) as e:
        with write_once(zoo, {"run": "x"}) as tmp:
            (tmp / "scores.parquet").write_bytes(b"x")
    assert str(zoo) in _one_line(e)
    assert is_whole(sae)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(StoreError, match="not a directory"):
        with write_once(tmp_path / "f") as tmp:
            (tmp / "x").write_text("x")
    assert (tmp_path / "f").read_text() == "a file"


def test_an_incomplete_directory_without_nested_results_is_replaced(tmp_path):
    """A deleted `_COMPLETE.json` (e.g. under datasets/) does not block the rebuild."""
    d = _dir(tmp_path / "d")
    (d / MARKER).unlink()
    _dir(d)
    assert is_whole(d)


# -- failures leave nothing behind, lose nothing -----------------------------------------------------------------------
def test_a_full_disk_leaves_no_temporary_files_and_keeps_what_was_written(tmp_path, monkeypatch):
    d = _dir(tmp_path / "d", kind="k")
    before = (d / "a.bin").read_bytes()
    real_write_text = Path.write_text

    def full(self, *a, **kw):
        if self.name == MARKER:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    for _ in range(2):  # reruns do not pile up temp files either
        with pytest.raises(StoreError) as e:
            with write_once(d, replace=True, kind="k") as tmp:
                (tmp / "a.bin").write_bytes(b"new")
        assert "No space left on device" in _one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert (d / "a.bin").read_bytes() == before and is_whole(d)


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    d = _dir(tmp_path / "d", kind="k")
    real = os.replace

    def fail_install(src, dst):
        if ".partial-" in str(src):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_install)
    with pytest.raises(StoreError):
        with write_once(d, replace=True, kind="k") as tmp:
            (tmp / "a.bin").write_bytes(b"new")
    assert is_whole(d) and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# -- concurrent writers -------------------------------------------------------------------------------------------------
def test_a_live_writers_partial_directory_is_left_alone(tmp_path):
    final = tmp_path / "d"
    live = tmp_path / f"d.partial-{atomic._HOST}-{os.getpid()}-abcd1234"  # ours: alive
    live.mkdir()
    other_host = tmp_path / "d.partial-elsewhere-1-abcd1234"  # another machine's: not ours to judge
    other_host.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"d.partial-{atomic._HOST}-{dead.pid}-abcd1234"
    gone.mkdir()
    _dir(final)
    assert live.is_dir() and other_host.is_dir() and not gone.exists()


def _slow_writer(final: str, value: str, barrier) -> None:
    barrier.wait()
    with write_once(Path(final), {"value": value}, kind="k") as tmp:
        (tmp / "part1.txt").write_text(value)
        time.sleep(0.3)  # the other writer starts (and cleans up) while this one is writing
        (tmp / "part2.txt").write_text(value)


def test_two_processes_writing_the_same_target_both_finish_and_the_result_is_whole(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    final = tmp_path / "d"
    procs = [ctx.Process(target=_slow_writer, args=(str(final), v, barrier)) for v in ("one", "two")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    verify_dir(final)
    value = read_marker(final)["value"]
    assert (final / "part1.txt").read_text() == (final / "part2.txt").read_text() == value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_read_parquet_names_a_truncated_file_in_one_line(tmp_path):
    from storage.integrity import read_parquet

    d = tmp_path / "d"
    with write_once(d) as tmp:
        pl.DataFrame({"x": list(range(1000))}).write_parquet(tmp / "t.parquet")
    assert read_parquet(d / "t.parquet")["x"].sum() == sum(range(1000))
    _truncate(d / "t.parquet")
    with pytest.raises(StoreError) as e:
        read_parquet(d / "t.parquet")
    assert str(d / "t.parquet") in _one_line(e)
