"""Where a run is: per stage, pieces done of N, reported by the flows and tasks that do the work.

A flow says a stage starts and how many pieces it has (`begin`), each task run that ends advances it by one (`hooks`,
spread into `@task`: Prefect runs `on_completion` for cache hits too), a training loop reports its steps
(`step_callback`), and the flow closes the stage once its futures resolved (`end`). Listeners (`subscribe`: the CLI's
progress view) see every change; inside a Prefect flow run each stage is also a progress artifact of that run, updated
at most about once a second. Thread-safe: tasks run in threads.

In a worker process of a Dask cluster (`forward_to`), changes are not kept but sent to the flow's process, which
applies them (`apply`). Begin and end nest: a stage begun again while it runs grows by the new total and ends at the matching last `end`
(two flows feeding one stage at once share one bar). This module imports no Prefect: the CLI loads it before
anything heavy; a flow run is detected only where Prefect is already imported.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

STAGES: dict[str, tuple[str, str]] = {
    # id: (label, unit)
    "setup": ("start-up", ""),
    "zoo-model": ("zoo: model training", "steps"),
    "zoo-saes": ("zoo: SAEs trained", "SAEs"),
    "capture": ("capture", "chunks"),
    "locate": ("location search", "attributes"),
    "fit": ("ground truth", "cross-sections"),
    "score": ("scoring", "units"),
    "core": ("core metrics", "SAEs"),
}
PUBLISH_EVERY_S = 1.0  # Prefect artifact updates, at most
STEP_EVERY_S = 0.2  # training-step notifications, at most (a tiny model takes thousands of steps a second)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One change of one stage. `total` is None while unknown; `elapsed` is seconds since the stage began."""

    kind: Literal["begin", "advance", "end"]
    stage: str
    label: str
    unit: str
    done: int
    total: int | None
    elapsed: float
    note: str = ""


Listener = Callable[[Event], None]


@dataclass
class _Stage:
    stage: str
    total: int | None
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    opens: int = 1
    artifacts: dict[Any, Any] = field(default_factory=dict)  # flow run id -> its key in _made
    published: float = -math.inf  # never published yet (monotonic() may be small: it counts from boot)
    note: str = ""

    def event(self, kind: Literal["begin", "advance", "end"]) -> Event:
        label, unit = STAGES[self.stage]
        return Event(kind, self.stage, label, unit, self.done, self.total, time.monotonic() - self.started, self.note)


_lock = threading.RLock()
_changed = threading.Condition(_lock)
_stages: dict[str, _Stage] = {}
_forward: Callable[[tuple], None] | None = None  # set in a worker process: where its changes go
_remote = {"expected": False}  # the flow's process: changes also arrive from worker processes
_remote_steps: dict[tuple[str, str], Callable[[int, int], None]] = {}
REMOTE_SETTLE_S = 2.0  # at `end`, how long to wait for workers' last changes still on their way
_listeners: list[Listener] = []
_made: dict[tuple[str, Any], Any] = {}  # (stage, flow run id) -> its progress artifact's id


def _check(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown progress stage {stage!r}; use one of {', '.join(STAGES)}")


def _notify(event: Event) -> None:
    for listener in list(_listeners):  # under the lock: every listener sees one stage's events in order
        listener(event)


def begin(stage: str, total: int, note: str = "") -> None:
    """`stage` starts with `total` pieces (added to its total if it is already running); `note` says more in its
    first line."""
    _check(stage)
    with _lock:
        s = _stages.get(stage)
        if s is None:
            s = _stages[stage] = _Stage(stage, max(int(total), 0), note=note)
            _notify(s.event("begin"))
        else:
            s.opens += 1
            s.total = (s.total or 0) + max(int(total), 0)
            _notify(s.event("advance"))
    _publish(s, create=True)


def advance(stage: str, n: int = 1) -> None:
    """`n` more pieces of `stage` are done; a stage nobody began starts here, its size unknown."""
    _check(stage)
    if _forward is not None:
        _forward(("advance", stage, n))
        return
    with _lock:
        s = _stages.get(stage)
        if s is None:
            s = _stages[stage] = _Stage(stage, None, opens=0)
            _notify(s.event("begin"))
        s.done += n
        _notify(s.event("advance"))
        _changed.notify_all()
    _publish(s)


def end(stage: str) -> None:
    """`stage` is over (the last of its nested `begin`s): listeners get its final count and duration."""
    _check(stage)
    with _lock:
        s = _stages.get(stage)
        if s is None:
            return
        s.opens -= 1
        if s.opens > 0:
            return
        if _remote["expected"] and s.total is not None:  # its pieces are done: their events may still be arriving
            _changed.wait_for(lambda: s.done >= s.total, timeout=REMOTE_SETTLE_S)
        del _stages[stage]
        _notify(s.event("end"))
    _publish(s, final=True)


def step_callback(stage: str) -> Callable[[int, int], None]:
    """`on_step(done, total)` for a `sage_core` training loop: advances `stage` by the steps done since the last call,
    at most every STEP_EVERY_S (and at the last step). A stage nobody began is begun with the loop's total and ended at
    its last step."""
    _check(stage)
    if _forward is not None:
        return _forwarded_steps(stage, _forward)
    mine = threading.Lock()
    state = {"reported": 0, "at": -math.inf, "started": False, "owns": False}

    def on_step(done: int, total: int) -> None:
        now = time.monotonic()
        if state["started"] and done < total and now - state["at"] < STEP_EVERY_S:
            return
        with mine:
            first, state["started"] = not state["started"], True
            delta, state["reported"], state["at"] = done - state["reported"], done, now
        if first:
            with _lock:
                s = None if stage in _stages else _Stage(stage, max(int(total), 0))
                if s is not None:
                    _stages[stage] = s
                    state["owns"] = True
                    _notify(s.event("begin"))
            if s is not None:
                _publish(s, create=True)
        if delta > 0:
            advance(stage, delta)
        if done >= total and state["owns"]:
            state["owns"] = False
            end(stage)

    return on_step


def _forwarded_steps(stage: str, send: Callable[[tuple], None]) -> Callable[[int, int], None]:
    """A worker's training loop: its steps go to the flow's process at most every STEP_EVERY_S (and the last one)."""
    # -inf, not 0.0: monotonic() counts from an arbitrary point (boot on Linux), so the first step always goes
    source, state = uuid.uuid4().hex, {"at": -math.inf}

    def on_step(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - state["at"] < STEP_EVERY_S:
            return
        state["at"] = now
        send(("steps", stage, source, done, total))

    return on_step


def forward_to(send: Callable[[tuple], None] | None) -> None:
    """In a worker process: send every change to the flow's process (`send(message)`, applied there by `apply`)
    instead of keeping it; None keeps changes here again."""
    global _forward
    _forward = send


def expect_remote(on: bool) -> None:
    """The flow's process: changes also arrive from workers (so `end` waits a moment for the last ones)."""
    _remote["expected"] = on


def expecting_remote() -> bool:
    return _remote["expected"]


def apply(message: tuple) -> None:
    """A change a worker forwarded. Pieces of a stage that already ended are dropped (never a stage of its own)."""
    kind, stage = message[0], message[1]
    if stage not in STAGES:
        return
    if kind == "advance":
        with _lock:
            running = stage in _stages
        if running:
            advance(stage, int(message[2]))
    elif kind == "steps":
        _, _, source, done, total = message
        with _lock:
            on_step = _remote_steps.setdefault((stage, source), step_callback(stage))
        on_step(int(done), int(total))
        if done >= total:
            with _lock:
                _remote_steps.pop((stage, source), None)


def hooks(stage: str) -> dict[str, list[Callable[..., None]]]:
    """Prefect task state hooks: every task run of `stage` that ends (completed, cached or failed) advances it by one.
    Spread into the decorator: `@task(..., **progress.hooks("score"))`."""
    _check(stage)

    def piece_done(task: Any, task_run: Any, state: Any) -> None:  # noqa: ARG001 (Prefect's hook signature)
        advance(stage)

    piece_done.__name__ = f"progress-{stage}"  # what Prefect's log lines call the hook
    return {"on_completion": [piece_done], "on_failure": [piece_done]}


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener(event)` on every change (first with a `begin` for each stage already running); returns the
    function that unsubscribes it."""
    with _lock:
        _listeners.append(listener)
        for s in _stages.values():
            listener(s.event("begin"))

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def running() -> list[Event]:
    """A snapshot of the stages running now."""
    with _lock:
        return [s.event("advance") for s in _stages.values()]


def reset() -> None:
    """Forget every stage and listener (tests, and a CLI that runs twice in one process)."""
    with _lock:
        _stages.clear()
        _listeners.clear()
        _made.clear()
        _remote_steps.clear()


def describe(e: Event) -> str:
    """The stage's state in words: '12 attributes', '3 of 12 attributes', 'done, 12 attributes in 43.1 s'."""
    def unit(n: int | None) -> str:  # '1 chunk', '2 chunks'
        return "" if not e.unit else f" {e.unit.removesuffix('s')}" if n == 1 else f" {e.unit}"

    if e.kind == "begin":
        size = f"{e.total}{unit(e.total)}" if e.total is not None and e.unit else ""
        return ", ".join(x for x in (size, e.note) if x) or "started"
    count = "" if not e.unit else \
        f"{e.done}{unit(e.done)}" if e.total is None or e.done == e.total else f"{e.done} of {e.total}{unit(e.total)}"
    if e.kind == "end":
        return f"done, {count} in {e.elapsed:.1f} s" if count else f"done in {e.elapsed:.1f} s"
    return count


# ---- Prefect progress artifacts: one per stage per flow run -------------------------------------------------------


def _flow_run_id() -> Any:
    if "prefect.context" not in sys.modules:  # nothing imported Prefect: no flow run can be running
        return None
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None


def _percent(s: _Stage) -> float:
    if not s.total:
        return 0.0
    return max(0.0, min(100.0, 100.0 * s.done / s.total))


def _publish(s: _Stage, create: bool = False, final: bool = False) -> None:
    """Create (at `begin`, inside a flow run) or update (throttled; always at the end) the stage's artifact in each
    flow run it is part of: one per stage per flow run, reused when the stage begins again in that run. A progress
    artifact that cannot be written is dropped with a debug line: progress never fails a run."""
    flow_run = _flow_run_id() if create else None
    now = time.monotonic()
    with _lock:
        joined = flow_run is not None and flow_run not in s.artifacts
        key = (s.stage, flow_run)
        make = joined and key not in _made
        if joined:
            s.artifacts[flow_run] = key
            _made.setdefault(key, None)  # None: being created; whoever begins the stage next in this run reuses it
        targets = [a for a in (_made.get(k) for k in s.artifacts.values()) if a is not None]
        if not make and not (targets and (final or joined or now - s.published >= PUBLISH_EVERY_S)):
            return
        s.published = now
        event = s.event("end" if final else "advance")
        percent = 100.0 if final else _percent(s)
    from httpx import HTTPError
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.exceptions import PrefectException

    text = f"{event.label}: {describe(event)}" if event.total or event.done else event.label
    try:
        if make:
            made = create_progress_artifact(progress=percent, key=f"progress-{s.stage}", description=text)
            with _lock:
                _made[key] = made
        for art in targets:
            update_progress_artifact(artifact_id=art, progress=percent, description=text)
    except (HTTPError, PrefectException, RuntimeError, OSError, ValueError) as exc:
        log.debug("progress artifact for %s not written: %s", s.stage, exc)
