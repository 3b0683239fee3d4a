"""One key per output (issue #15 items 1, 3, 8): made from the inputs' content, the config and the code of the modules
the stage runs; never from paths or the data root; cache records are plain JSON."""

from __future__ import annotations

import json

import pytest

from storage import hashing


@pytest.fixture
def edit_module(monkeypatch):
    """Pretend a project module's source changed (the code-version caches are cleared before and after)."""
    edits: dict[str, bytes] = {}
    real = hashing.module_source

    def clear():
        hashing.stage_code_version.cache_clear()
        hashing.module_closure.cache_clear()

    def edit(name: str) -> None:
        assert hashing.module_file(name) is not None, name
        edits[name] = b"\n# edited\n"
        clear()

    monkeypatch.setattr(hashing, "module_source", lambda name: real(name) + edits.get(name, b""))
    clear()
    yield edit
    clear()


def _inputs():
    from sage_core.config import ZooConfig

    m = {"path": "zoo/m/model", "hash": "h-model"}
    return {"cfg": ZooConfig.tiny(), "model": m, "home": "/data/a"}


def _keys() -> dict[str, str]:
    from tasks import fit, locate, score, zoo

    tasks = [zoo.make_tokenizer, zoo.train_model, zoo.train_sae, zoo.capture_sae_activations, locate.locate_one,
             fit.fit_section, score.score_unit, score.section_references, score.sae_core_metrics]
    from tasks.common import task_key

    return {t.name: task_key(t, _inputs()) for t in tasks}


def test_a_scoring_change_moves_the_score_keys_and_not_the_zoo_keys(edit_module):
    before = _keys()
    edit_module("sage_core.scoring")
    after = _keys()
    changed = {k for k in before if before[k] != after[k]}
    assert {"score-unit", "section-references", "core-metrics"} <= changed
    assert not changed & {"make-tokenizer", "train-model", "train-sae", "capture-sae-activations", "locate-attribute",
                          "fit-section"}, changed


def test_a_report_change_moves_no_key(edit_module):
    from flows.build_zoo import zoo_key
    from sage_core.config import ZooConfig

    before, zoo_before = _keys(), zoo_key(ZooConfig.tiny())
    for name in ("sage_core.report_plots", "storage.reports", "flows.cli"):
        edit_module(name)
    assert _keys() == before and zoo_key(ZooConfig.tiny()) == zoo_before


def test_a_zoo_code_change_moves_the_zoo_key(edit_module):
    from flows.build_zoo import zoo_key
    from sage_core.config import ZooConfig

    before, zoo_before = _keys(), zoo_key(ZooConfig.tiny())
    edit_module("sage_core.sae_zoo")
    assert _keys()["train-sae"] != before["train-sae"] and zoo_key(ZooConfig.tiny()) != zoo_before


def test_keys_ignore_the_data_root_and_paths_but_not_content():
    from tasks.common import task_key
    from tasks.score import sae_core_metrics as t

    a = {"sae_m": {"name": "s", "hash": "1"}, "model": {"path": "zoo/m/model", "hash": "m"}, "home": "/x"}
    moved = {**a, "home": "/elsewhere", "model": {"path": "other/place", "hash": "m"}}
    other = {**a, "model": {"path": "zoo/m/model", "hash": "m2"}}
    assert task_key(t, a) == task_key(t, moved)
    assert task_key(t, a) != task_key(t, other)


def test_closure_follows_from_imports_and_skips_type_checking_ones():
    closure = hashing.module_closure("tasks.zoo")
    assert "sage_core.sae_zoo" in closure and "storage.atomic" in closure
    assert "sage_core.scoring" not in closure and "sage_core.config" not in closure
    assert "sage_core.scoring" in hashing.module_closure("tasks.score")


def test_manifests_persist_as_plain_json_and_other_records_are_refused():
    import pickle

    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    from tasks.common import SERIALIZER, ManifestSerializer, serializer_of

    s = ManifestSerializer()
    m = {"path": "a/b", "hash": "x", "rows": [{"v": 1.5}]}
    assert s.loads(s.dumps(m)) == m and json.loads(s.dumps(m)) == m
    with pytest.raises(TypeError):
        s.dumps({"obj": object()})  # a manifest is plain data: anything else is a bug, not a pickle
    good = ResultRecord(metadata=ResultRecordMetadata(serializer=s, storage_key="k1"), result=m)
    assert serializer_of(good.serialize()) == SERIALIZER
    assert ResultRecord.deserialize(good.serialize()).result == m
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key="k2"),
                           result=pickle.dumps)
    assert serializer_of(planted.serialize()) == "pickle"
