"""Zoo records and tables (issue #27 items 3 and 4): a record holds references only, and every number `sage zoo
info` and the evaluation use is read from the table's file, checked against its hash; an edited record or an edited
table is one error line, never shown as the zoo's metrics."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

from storage.atomic import StoreError
from storage.home import SageHome
from storage.records import write_record
from storage.refs import CoreRef, CorpusRef, ModelRef, TableRef, ZooRef
from storage.zoo import read_zoo_table, write_zoo_table
from tests.acceptance.cli import one_line_error, run_in_process

ROWS = [{"task": "ioi", "accuracy": 0.816, "logit_diff": 2.5, "top1": 0.75, "n": 64}]


def _zoo(h: SageHome) -> ZooRef:
    model = ModelRef(path="zoo/m/model", hash="mh")
    return ZooRef(model=model, datasets=(), corpus=CorpusRef(path="zoo/m/corpus.parquet", hash="ch"),
                  model_eval=write_zoo_table(h, model, "model_metrics", pl.DataFrame(ROWS)))


def test_references_carry_no_numbers():
    """What a Prefect cache record or a flow record holds: a path and a hash; rows or metrics are refused."""
    with pytest.raises(ValidationError):
        TableRef(path="a", hash="h", rows=ROWS)
    with pytest.raises(ValidationError):
        CoreRef(path="a", hash="h", sae="s", metrics={"ce_loss_recovered": 0.816})


def test_a_table_is_read_from_its_file_and_an_edited_one_is_refused(tmp_path):
    h = SageHome(tmp_path)
    ref = _zoo(h).model_eval
    assert read_zoo_table(h, ref) == ROWS
    pl.DataFrame([{**ROWS[0], "accuracy": 0.916}]).write_parquet(h.at(ref))
    with pytest.raises(StoreError, match="changed since it was written; rebuild the zoo") as e:
        read_zoo_table(h, ref)
    assert "\n" not in str(e.value)


def test_zoo_info_refuses_an_edited_record_or_table(tmp_path):
    h = SageHome(tmp_path)
    zoo = _zoo(h)
    write_record(h.zoo_record("m"), "key", zoo)  # as `storage.zoo.write_zoo_record` does
    r = run_in_process(["zoo", "info"], tmp_path)
    assert r.returncode == 0 and "0.816" in r.stdout, r.stdout
    rec = h.zoo_record("m")
    original = rec.read_text()
    rec.write_text(original.replace('"th', '"tx').replace(zoo.model_eval.hash, "0" * len(zoo.model_eval.hash)))
    json.loads(rec.read_text())
    r = run_in_process(["zoo", "info"], tmp_path)
    assert r.returncode == 2 and one_line_error(r), r.stdout
    assert "zoo-record.json" in r.stdout and "changed since it was written" in r.stdout and "sage zoo build" in r.stdout
    rec.write_text(original)
    pl.DataFrame([{**ROWS[0], "accuracy": 0.916}]).write_parquet(h.at(zoo.model_eval))
    r = run_in_process(["zoo", "info"], tmp_path)
    assert "0.916" not in r.stdout, "an edited table is shown as the zoo's metrics"
    assert r.returncode == 2 and one_line_error(r), r.stdout
    assert "model_metrics.parquet changed since it was written" in r.stdout
