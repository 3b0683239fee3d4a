"""One cache for every entry point and a data root that can move (issue #15 items 3, 8, 12): a flow called directly
(as a deployment's worker does) after a CLI-style run is all cache hits; a copied SAGE_HOME with the original moved
away reads whole from the copy; a cached task whose output is gone or damaged recomputes it; no pickle anywhere."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _task_states(state, expect: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """task name -> final state names of the flow run's task runs. They reach the server asynchronously (a busy
    server may not have all of them yet when the first are final): wait until every run is final, the count holds
    over two reads, and every task named in `expect` is there."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    seen = -1
    with get_client(sync_client=True) as client:
        for _ in range(240):
            runs = client.read_task_runs(flow_run_filter=flt)
            names = [r.state.name if r.state else "Pending" for r in runs]
            present = {r.name.split(" ", 1)[0] for r in runs}
            if (names and not {"Running", "Pending", "Scheduled"} & set(names) and len(runs) == seen
                    and set(expect) <= present):
                break
            seen = len(runs)
            time.sleep(0.5)
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.split(" ", 1)[0], []).append(r.state.name if r.state else "Pending")  # "<task> <what>"
    return out


def _not_cached(states: dict[str, list[str]]) -> dict[str, list[str]]:
    """The tasks not answered from their cache but record-zoo: the flow's own record, dropped before the run so that
    it walks its tasks (`_without_flow_record`), is written again."""
    return {k: v for k, v in states.items() if set(v) != {"Cached"} and k != "record-zoo"}


@pytest.fixture(scope="module")
def copied(tiny_zoo, tmp_path_factory):
    """A copy of the tiny zoo's data root (the shared one stays untouched)."""
    home, cfg, *_ = tiny_zoo
    dst = tmp_path_factory.mktemp("copy") / "sage-home"
    shutil.copytree(home, dst)
    return home, dst, cfg


def test_no_pickle_under_sage_home(tiny_zoo):
    home, *_ = tiny_zoo
    records = list((home / ".prefect-results").iterdir())
    assert records, "the zoo's cache records must be under SAGE_HOME"
    for p in home.rglob("*"):
        if p.is_file():
            head = p.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), f"{p} is a pickle"
    for p in records:  # task records name their serializer; a flow's own result is the bare JSON value
        rec = json.loads(p.read_bytes())
        assert "metadata" not in rec or rec["metadata"]["serializer"]["type"] == "sage-json", p


def _without_flow_record(home, cfg) -> None:
    """Drop the zoo flow's own record, so a rerun walks its tasks (with it whole the flow returns at once)."""
    from storage.home import SageHome

    SageHome(home).zoo_record(cfg.model.name).unlink()


def test_a_deployment_style_run_after_a_cli_run_is_all_cache_hits(tiny_zoo):
    """tiny_zoo ran under the CLI's `results_in`; the flow called bare (no CLI helper, PREFECT_HOME elsewhere) finds
    the same records in SAGE_HOME."""
    from flows.build_zoo import build_zoo

    home, cfg, *_ = tiny_zoo
    _without_flow_record(home, cfg)  # the build writes it again, as it was
    state = build_zoo(cfg=cfg, home=str(home), return_state=True)
    assert state.is_completed()
    assert not _not_cached(_task_states(state))


def test_a_copied_home_reads_whole_with_the_original_moved_away(copied):
    from flows.build_zoo import build_zoo, zoo_if_whole
    from storage.home import SageHome
    from storage.refs import dump

    home, dst, cfg = copied
    hidden = home.with_name(home.name + "-away")
    home.rename(hidden)
    try:
        record = zoo_if_whole(cfg, SageHome(dst))
        assert record is not None, "the copied zoo record must read whole from the copy"
        assert str(hidden) not in json.dumps(dump(record)) and str(home) not in json.dumps(dump(record))
        _without_flow_record(dst, cfg)
        state = build_zoo(cfg=cfg, home=str(dst), return_state=True)
        assert state.is_completed() and not _not_cached(_task_states(state))
        out = state.result()
        assert (dst / out.saes[0].path / "cfg.json").is_file()
        assert not home.exists(), "nothing may be written to the original's path"
    finally:
        hidden.rename(home)


def test_a_deleted_dataset_marker_and_zoo_sae_marker_are_rebuilt(copied, caplog):
    from flows.build_zoo import build_zoo, zoo_if_whole
    from storage.atomic import MARKER, is_whole
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    _, dst, cfg = copied
    h = SageHome(dst)
    names = list_zoo_saes(h, cfg.model.name)
    ds_dir = next((dst / "datasets" / cfg.tasks[0]).glob("*/prompts.parquet")).parent
    (ds_dir / MARKER).unlink()
    sae_dir = h.sae_dir(cfg.model.name, names[0])
    (sae_dir / MARKER).unlink()
    assert zoo_if_whole(cfg, h) is None, "the zoo record check must notice a missing SAE marker"

    state = build_zoo(cfg=cfg, home=str(dst), return_state=True)
    assert state.is_completed()
    redone = _not_cached(_task_states(state, expect=("make-dataset", "train-sae")))
    assert "make-dataset" in redone and "train-sae" in redone, redone
    assert is_whole(ds_dir) and is_whole(sae_dir)
    assert list_zoo_saes(h, cfg.model.name) == names, "no SAE may be dropped"
    assert zoo_if_whole(cfg, h) is not None


def test_a_code_change_outside_the_zoo_recomputes_nothing_of_it(copied, monkeypatch):
    """Editing the scoring formulas or the report leaves every zoo task a cache hit."""
    from flows.build_zoo import build_zoo
    from storage import hashing

    _, dst, cfg = copied
    real = hashing.module_source
    monkeypatch.setattr(hashing, "module_source", lambda name: real(name) + (
        b"\n# edited\n" if name in ("sage_core.scoring.score", "report.summary", "storage.reports") else b""))
    hashing.stage_code_version.cache_clear()
    hashing.module_closure.cache_clear()
    _without_flow_record(dst, cfg)
    try:
        state = build_zoo(cfg=cfg, home=str(dst), return_state=True)
        assert state.is_completed() and not _not_cached(_task_states(state))
    finally:
        hashing.stage_code_version.cache_clear()
        hashing.module_closure.cache_clear()
