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
    with pytest.raises(StoreError) as e, write_once(d, {"run": "r"}, replace=True, kind="scores-run") as tmp:
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
    with pytest.raises(StoreError) as e, write_once(zoo, {"run": "x"}) as tmp:
        (tmp / "scores.parquet").write_bytes(b"x")
    assert str(zoo) in _one_line(e)
    assert is_whole(sae)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(StoreError, match="not a directory"), write_once(tmp_path / "f") as tmp:
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
        with pytest.raises(StoreError) as e, write_once(d, replace=True, kind="k") as tmp:
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
    with pytest.raises(StoreError), write_once(d, replace=True, kind="k") as tmp:
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


def test_read_parquet_names_a_file_that_was_unreadable_when_written(tmp_path):
    """A file that matches its checksums but is not parquet: one line naming it, not polars' own error."""
    from storage.integrity import read_parquet

    d = tmp_path / "d"
    with write_once(d) as tmp:
        (tmp / "t.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StoreError) as e:
        read_parquet(d / "t.parquet")
    assert str(d / "t.parquet") in _one_line(e) and "unreadable" in str(e.value)


# -- the readers of durable tables check what they read ------------------------------------------------------------------
def _prompts(home, task="ioi", key="k1"):
    from storage.datasets import write_prompts

    df = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(500)], "tokens": [[i, i + 1, i + 2] for i in range(500)]})
    return write_prompts(home, task, key, df, {"task": task}), df


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_marker", "delete_table", "old_marker"])
def test_prompt_table_damage_is_named_in_one_line_and_the_writer_rebuilds_it(tmp_path, damage):
    from storage.datasets import read_corpus, read_prompts
    from storage.home import SageHome

    home = SageHome(tmp_path)
    path, df = _prompts(home)
    assert read_prompts(path).equals(df)
    if damage == "truncate":
        _truncate(path)
    elif damage == "flip":
        _flip(path)
    elif damage == "delete_marker":
        (path.parent / MARKER).unlink()
    elif damage == "delete_table":
        path.unlink()
    else:
        m = json.loads((path.parent / MARKER).read_text())
        (path.parent / MARKER).write_text(json.dumps({k: v for k, v in m.items() if k != "files"}))
    for reader in (read_prompts, read_corpus):
        with pytest.raises(StoreError) as e:
            reader(path)
        msg = _one_line(e)
        assert str(path.parent) in msg and "rerun" in msg
    assert _prompts(home)[0] == path  # what `sage zoo build` does: the damaged table is written again
    assert read_prompts(path).equals(df)
    assert sorted(p.name for p in path.parent.parent.iterdir()) == ["k1"]


def _section(d: Path) -> Path:
    import torch

    from sage_core.ground_truth.dictionaries import Dictionary
    from storage.ground_truth import QUALITY_COLUMNS, write_section

    dic = Dictionary(method="mean", mean=torch.zeros(64), vectors={"name": {"a": torch.ones(64), "b": -torch.ones(64)}},
                     weights={"name": 1.0})
    row = dict.fromkeys(QUALITY_COLUMNS, 0.5) | {"task": "ioi", "attribute": "name", "hook": "h", "role": "END",
                                                 "method": "mean", "head": None}
    return write_section(d, {"mean": dic}, [row], {"model": "m"})


def test_ground_truth_dictionary_and_quality_are_checked_when_read(tmp_path):
    from storage.ground_truth import combine, dictionary_path, load_dictionary, read_quality

    part = _section(tmp_path / "parts" / "s1")
    assert load_dictionary(dictionary_path(part, "mean")).vectors["name"]["a"].sum() == 64
    final = combine(tmp_path / "gt", [str(part)])
    assert read_quality(final)["necessity"].to_list() == [0.5]
    _flip(dictionary_path(part, "mean"), at=-40)
    with pytest.raises(StoreError) as e:
        load_dictionary(dictionary_path(part, "mean"))
    assert "mean.safetensors" in _one_line(e)
    _truncate(part / "quality.parquet")
    with pytest.raises(StoreError, match="quality.parquet"):
        read_quality(part)
    with pytest.raises(StoreError, match="quality.parquet"):
        combine(tmp_path / "gt2", [str(part)])
    _section(part)  # the fit stage rewrites the damaged section
    assert load_dictionary(dictionary_path(part, "mean")).vectors["name"]["b"].sum() == -64


def test_location_tables_are_checked_when_read(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from storage.locations import combine, read_ranking, read_validation, write_part

    row = {"task": "ioi", "attribute": "name", "hook": "h", "kind": "resid", "layer": 0, "head": None, "role": "END",
           "group": "g", "atp": 0.1, "rank": 1, "selected": True, "patch_effect": 0.2}
    fig = plt.figure()
    part = write_part(tmp_path / "parts" / "p1", [row], {"task": "ioi", "attribute": "name", "ok": True}, fig)
    plt.close(fig)
    final = combine(tmp_path / "loc", [part])
    assert read_ranking(final)["atp"].to_list() == [0.1] and read_validation(final)["ok"].to_list() == [True]
    _flip(part / "heatmap.png")
    with pytest.raises(StoreError, match="heatmap.png"):
        combine(tmp_path / "loc2", [part])
    _truncate(final / "ranking.parquet")
    with pytest.raises(StoreError) as e:
        read_ranking(final)
    assert "ranking.parquet" in _one_line(e)
