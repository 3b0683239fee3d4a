"""A cache record is refused at read time unless it names the SAGE JSON serializer (issue #15 item 3): a pickle swapped
in after the cache policy looked at the record is still never loaded; the task recomputes and overwrites it."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration]


def test_a_pickle_swapped_in_after_the_key_check_is_never_loaded(prefect_harness, tmp_path, monkeypatch):

    from prefect import flow
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    from sage_core.config import ZooConfig
    from storage.home import SageHome
    from storage.refs import TokenizerRef
    from tasks import common, zoo

    home = SageHome(tmp_path / "home")
    cfg = ZooConfig.tiny()
    task = common.in_home(zoo.make_tokenizer, home)
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key="x"),
                           result="planted").serialize()
    real = common.StageCache.compute_key

    def check_then_swap(self, task_ctx, inputs, flow_parameters, **kw):
        key = real(self, task_ctx, inputs, flow_parameters, **kw)  # it looked: nothing (or ours) there
        path = common.record_path(task_ctx.result_store.result_storage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(planted)
        return key

    monkeypatch.setattr(common.StageCache, "compute_key", check_then_swap)

    @flow
    def run() -> TokenizerRef:
        return task(cfg, str(home.root))

    out = run()
    assert isinstance(out, TokenizerRef) and home.at(out).is_dir(), out
    assert common.serializer_of(next(home.prefect_results().iterdir()).read_bytes()) == common.SERIALIZER
