"""SageHome: the data root is checked before any compute, and stored paths are relative to it (issue #15 items 8, 12)."""

from __future__ import annotations

import os

import pytest

from storage.atomic import StoreError
from storage.home import SageHome


def test_ensure_writable_creates_a_missing_root(tmp_path):
    h = SageHome(tmp_path / "a" / "b")
    h.ensure_writable()
    assert h.root.is_dir() and not any(h.root.iterdir()), "the probe file must not be left behind"


def test_a_root_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "home").write_text("not a directory")
    with pytest.raises(StoreError, match="is a file, not a directory; set SAGE_HOME") as e:
        SageHome(tmp_path / "home").ensure_writable()
    assert "\n" not in str(e.value)


def test_a_root_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="cannot create the data root") as e:
        SageHome(tmp_path / "f" / "home").ensure_writable()
    assert "\n" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the read-only mount case is "
                                               "covered by test_a_root_that_refuses_writes_is_refused")
def test_a_read_only_root_is_refused_in_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="not writable"):
            SageHome(ro).ensure_writable()
    finally:
        ro.chmod(0o755)


def test_a_root_that_refuses_writes_is_refused(tmp_path, monkeypatch):
    """A read-only mount (EROFS) as root sees it: the probe write fails, whatever the permission bits say."""
    import tempfile

    def erofs(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", erofs)
    with pytest.raises(StoreError, match=r"not writable \(Read-only file system\)") as e:
        SageHome(tmp_path).ensure_writable()
    assert "\n" not in str(e.value) and "SAGE_HOME" in str(e.value)


def test_relative_and_at_round_trip(tmp_path):
    h = SageHome(tmp_path)
    p = h.scores_dir("r1") / "scores.parquet"
    rel = h.relative(p)
    assert rel == "scores/r1/scores.parquet"
    assert h.at(rel) == p
    moved = SageHome(tmp_path / "copy")
    assert moved.at(rel) == moved.root / "scores" / "r1" / "scores.parquet"


@pytest.mark.parametrize("rel", ["/etc/passwd", "../outside", "scores/../../outside", ""])
def test_at_refuses_paths_outside_the_root(tmp_path, rel):
    with pytest.raises(ValueError, match="relative path inside the data root"):
        SageHome(tmp_path).at(rel)


def test_relative_refuses_a_path_outside_the_root(tmp_path):
    with pytest.raises(ValueError, match="not under the data root"):
        SageHome(tmp_path / "home").relative(tmp_path / "elsewhere" / "x")
