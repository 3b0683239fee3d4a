"""`sage zoo info` shows the zoo record's rows only while the record verifies (issue #27 item 4): an edited row is one
error line, never printed as the zoo's metrics."""

from __future__ import annotations

import json

from storage.home import SageHome
from storage.records import write_record
from storage.refs import CorpusRef, ModelRef, TableRef, ZooRef
from tests.acceptance.cli import one_line_error, run_in_process


def _zoo() -> ZooRef:
    rows = [{"task": "ioi", "accuracy": 0.816, "logit_diff": 2.5, "top1": 0.75, "n": 64}]
    return ZooRef(model=ModelRef(path="zoo/m/model", hash="mh"), datasets=(),
                  corpus=CorpusRef(path="zoo/m/corpus.parquet", hash="ch"),
                  model_eval=TableRef(path="zoo/m/report/model_metrics.parquet", hash="th", rows=rows))


def test_zoo_info_refuses_an_edited_record(tmp_path):
    h = SageHome(tmp_path)
    write_record(h.zoo_record("m"), "key", _zoo())  # as `storage.zoo.write_zoo_record` does
    r = run_in_process(["zoo", "info"], tmp_path)
    assert r.returncode == 0 and "0.816" in r.stdout, r.stdout
    rec = h.zoo_record("m")
    rec.write_text(rec.read_text().replace("0.816", "0.916"))
    json.loads(rec.read_text())
    r = run_in_process(["zoo", "info"], tmp_path)
    assert "0.916" not in r.stdout, "an edited row of zoo-record.json is shown as the zoo's metrics"
    assert r.returncode == 2 and one_line_error(r), r.stdout
    assert "zoo-record.json" in r.stdout and "changed since it was written" in r.stdout and "sage zoo build" in r.stdout
