"""Flow records (`storage.records`): each carries a checksum of what it records, so an edited record is never read as
fact: the flows treat it as absent (and rebuild it), a command that shows it names it in one line (issue #27 item 4)."""

from __future__ import annotations

import json

import pytest

from storage.atomic import StoreError
from storage.records import read_record, write_record


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    json.loads(path.read_text())  # still valid JSON: only the checksum can tell


def test_an_edited_record_is_not_trusted(tmp_path):
    rec = tmp_path / "records" / "k.json"
    write_record(rec, "k", {"ce_loss_recovered": 0.816, "rows": [{"sae": "a", "l0": 12.5}]})
    assert read_record(rec, "k", lambda _: True) == {"ce_loss_recovered": 0.816, "rows": [{"sae": "a", "l0": 12.5}]}
    _edit(rec, "0.816", "0.916")
    assert read_record(rec, "k", lambda _: True) is None, "an edited record is read as fact"
    from storage.records import checked_record

    with pytest.raises(StoreError) as err:
        checked_record(rec, dict, "run `sage zoo build` to rewrite it")
    msg = str(err.value)
    assert "\n" not in msg and str(rec) in msg and "changed since it was written" in msg
    assert msg.endswith("run `sage zoo build` to rewrite it")


def test_a_record_without_a_checksum_is_not_trusted(tmp_path):
    rec = tmp_path / "k.json"
    rec.write_text(json.dumps({"key": "k", "manifest": {"a": 1}}))  # as SAGE wrote records before their checksums
    assert read_record(rec, "k", lambda _: True) is None
    from storage.records import checked_record

    with pytest.raises(StoreError, match="written before SAGE recorded a checksum"):
        checked_record(rec, dict, "rerun")


def test_checked_record_reads_a_whole_record_and_none_when_absent(tmp_path):
    from storage.records import checked_record

    rec = tmp_path / "k.json"
    assert checked_record(rec, dict, "rerun") is None
    write_record(rec, "k", {"a": [1, 2.5, None, "x"], "nan": float("nan")})
    got = checked_record(rec, dict, "rerun")
    assert got["a"] == [1, 2.5, None, "x"] and got["nan"] != got["nan"]
    with pytest.raises(StoreError, match="not a list"):
        checked_record(rec, list, "rerun")  # a record of another type is named, not returned
    rec.write_text('{"key": "k", "manif')
    with pytest.raises(StoreError, match="unreadable"):
        checked_record(rec, dict, "rerun")
