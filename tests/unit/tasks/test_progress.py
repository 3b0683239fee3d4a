"""Stage progress (tasks/progress.py): events to listeners, nesting, training-step throttling, task hooks (cache hits
included), thread safety, and the Prefect progress artifacts of a flow run."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tasks import progress


@pytest.fixture(autouse=True)
def fresh():
    progress.reset()
    yield
    progress.reset()


@pytest.fixture
def events():
    seen: list[progress.Event] = []
    unsubscribe = progress.subscribe(seen.append)
    yield seen
    unsubscribe()


def test_a_stage_begins_advances_and_ends_with_its_count_and_duration(events):
    progress.begin("locate", 3)
    progress.advance("locate")
    progress.advance("locate", 2)
    progress.end("locate")
    assert [(e.kind, e.done, e.total) for e in events] == [("begin", 0, 3), ("advance", 1, 3), ("advance", 3, 3),
                                                            ("end", 3, 3)]
    assert events[0].label == "location search" and events[0].unit == "attributes"
    assert progress.describe(events[0]) == "3 attributes"
    assert progress.describe(events[1]) == "1 of 3 attributes"
    end = progress.describe(events[-1])
    assert end.startswith("done, 3 attributes in ") and end.endswith(" s")
    assert events[-1].elapsed >= events[0].elapsed
    assert progress.running() == []


def test_a_stage_that_ends_short_says_how_far_it_got(events):
    progress.begin("fit", 4)
    progress.advance("fit")
    progress.end("fit")
    assert progress.describe(events[-1]).startswith("done, 1 of 4 cross-sections in ")


def test_a_unitless_stage_and_its_note(events):
    progress.begin("setup", 0, note="libraries, argument checks, Prefect server")
    progress.end("setup")
    assert progress.describe(events[0]) == "libraries, argument checks, Prefect server"
    assert progress.describe(events[1]).startswith("done in ")


def test_nested_begins_share_one_stage_that_ends_at_the_last_end(events):
    progress.begin("score", 2)
    progress.begin("score", 3)
    progress.advance("score", 5)
    progress.end("score")
    assert [e.kind for e in events] == ["begin", "advance", "advance"]
    assert events[-1].total == 5
    progress.end("score")
    assert events[-1].kind == "end" and events[-1].done == 5
    progress.end("score")  # one end too many: nothing to close, nothing said
    assert len(events) == 4


def test_advance_without_begin_starts_a_stage_of_unknown_size(events):
    progress.advance("core")
    assert events[0].kind == "begin" and events[0].total is None and progress.describe(events[0]) == "started"
    assert progress.describe(events[1]) == "1 SAE"
    progress.end("core")
    assert events[-1].kind == "end"


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown progress stage 'scoring'"):
        progress.begin("scoring", 1)


def test_a_late_subscriber_sees_the_running_stages_and_unsubscribing_stops_events():
    progress.begin("capture", 8)
    seen: list[progress.Event] = []
    unsubscribe = progress.subscribe(seen.append)
    assert [(e.kind, e.stage, e.total) for e in seen] == [("begin", "capture", 8)]
    unsubscribe()
    progress.advance("capture")
    assert len(seen) == 1
    unsubscribe()  # twice is harmless


@pytest.mark.parametrize("boot", [0.05, 100.0], ids=["just-booted", "up-a-while"])
def test_step_callback_begins_throttles_and_ends_a_stage_nobody_began(events, monkeypatch, boot):
    clock = [boot]  # monotonic() counts from boot: the first step goes however small it is
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    on_step = progress.step_callback("zoo-model")
    for done in range(1, 1001):  # a thousand steps within one instant: only the first is passed on
        on_step(done, 2000)
    assert [(e.kind, e.done) for e in events] == [("begin", 0), ("advance", 1)]
    clock[0] += 1.0
    on_step(1500, 2000)  # the steps in between arrive as one advance
    assert (events[-1].kind, events[-1].done) == ("advance", 1500)
    on_step(2000, 2000)  # the last step is never throttled, and ends the stage the callback began
    assert [(e.kind, e.done, e.total) for e in events[-2:]] == [("advance", 2000, 2000), ("end", 2000, 2000)]


def test_step_callback_in_a_begun_stage_leaves_ending_to_the_flow(events):
    progress.begin("zoo-model", 10)
    on_step = progress.step_callback("zoo-model")
    on_step(10, 10)
    assert events[-1].kind == "advance" and events[-1].done == 10
    progress.end("zoo-model")
    assert events[-1].kind == "end"


def test_hooks_advance_on_completion_and_on_failure(events):
    h = progress.hooks("score")
    assert set(h) == {"on_completion", "on_failure"}
    progress.begin("score", 2)
    h["on_completion"][0](None, None, None)
    h["on_failure"][0](None, None, None)
    assert events[-1].done == 2


def test_threads_advancing_at_once_lose_no_piece(events):
    progress.begin("score", 800)

    def work():
        for _ in range(100):
            progress.advance("score")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress.end("score")
    assert events[-1].kind == "end" and events[-1].done == 800
    dones = [e.done for e in events if e.kind == "advance"]
    assert dones == sorted(dones), "listeners see one stage's events in order"


def test_a_worker_forwards_its_changes_and_the_flow_process_applies_them(events, monkeypatch):
    """A Dask worker keeps nothing: its advances and training steps travel as messages (`forward_to`); the flow's
    process applies them to its running stages (`apply`) and drops pieces of a stage that already ended."""
    sent: list[tuple] = []
    progress.forward_to(sent.append)
    try:
        progress.advance("score")
        progress.advance("score", 2)
        monkeypatch.setattr(progress, "STEP_EVERY_S", 3600.0)
        with monkeypatch.context() as young:  # a machine booted a second ago: monotonic() is small, not 0
            young.setattr(progress.time, "monotonic", lambda: 1.0)
            on_step = progress.step_callback("zoo-saes")
            for done in range(1, 6):
                on_step(done, 5)
    finally:
        progress.forward_to(None)
    assert events == []  # nothing kept in the worker
    assert sent[:2] == [("advance", "score", 1), ("advance", "score", 2)]
    steps = [m for m in sent if m[0] == "steps"]
    assert [(m[3], m[4]) for m in steps] == [(1, 5), (5, 5)]  # throttled: the first step and the last

    progress.begin("score", 3)
    for m in sent:
        progress.apply(m)
    progress.end("score")
    progress.apply(("advance", "score", 1))  # late: the stage ended, no stage of its own
    progress.apply(("advance", "no-such-stage", 1))
    kinds = [(e.kind, e.stage, e.done, e.total) for e in events]
    assert ("end", "score", 3, 3) in kinds
    assert ("begin", "zoo-saes", 0, 5) in kinds and ("end", "zoo-saes", 5, 5) in kinds  # a worker's loop, shown here
    assert not [e for e in events if e.stage == "score" and e.kind == "begin"][1:]
    assert progress.running() == []


def test_end_waits_briefly_for_workers_last_pieces(events):
    progress.expect_remote(True)
    try:
        progress.begin("score", 2)
        progress.advance("score")
        late = threading.Timer(0.2, progress.apply, args=(("advance", "score", 1),))
        late.start()
        progress.end("score")  # the second piece is on its way from a worker
        late.join()
    finally:
        progress.expect_remote(False)
    assert [(e.kind, e.done) for e in events][-1] == ("end", 2)


def test_importing_progress_imports_no_prefect():
    code = "import sys, tasks.progress; print(any(m.split('.')[0] == 'prefect' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.integration
def test_cache_hits_advance_and_a_flow_run_gets_one_progress_artifact_per_stage(prefect_harness, tmp_path, events):
    """Prefect runs on_completion hooks for a cached task run too (its state is Completed, named Cached): both runs of
    the same inputs count. Inside the flow run the stage is one progress artifact (also when the stage begins again)
    that ends at 100%."""
    from prefect import flow, task
    from prefect.cache_policies import INPUTS
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context

    @task(cache_policy=INPUTS, persist_result=True, result_storage_key="progress-test-{parameters[x]}",
          **progress.hooks("fit"))
    def piece(x: int) -> int:
        return x + 1

    @flow(persist_result=True)
    def two_rounds() -> tuple[list, str]:
        progress.begin("fit", 6)
        first = [piece.submit(x) for x in range(3)]
        states = [f.wait() or f.state for f in first]
        again = [piece.submit(x) for x in range(3)]  # the same inputs, their results stored: cache hits
        states += [f.wait() or f.state for f in again]
        progress.end("fit")
        progress.begin("fit", 1)  # the stage again in the same flow run: the same artifact goes on
        progress.advance("fit")
        progress.end("fit")
        return [s.name for s in states], str(get_run_context().flow_run.id)

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(tmp_path)}):
        names, run_id = two_rounds()
    assert names[3:] == ["Cached"] * 3, names
    first_end = next(e for e in events if e.kind == "end")
    assert first_end.done == 6, (names, first_end)
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    progress_arts = [a for a in arts if a.type == "progress"]
    assert [a.key for a in progress_arts] == ["progress-fit"]
    assert progress_arts[0].data == 100.0 and "done, 1 cross-section " in progress_arts[0].description
