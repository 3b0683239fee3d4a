"""What `benchmarks/scale.py` and `benchmarks/scale_device.py` share: the tiny evaluation, one timed evaluate run on
an open engine, the Prefect-recorded run times of its scoring units, and switching load-once off in live processes.

Prefect and the flows are imported where used: `scale.py` sets Prefect's environment before anything imports it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sage_core.config import EvaluateConfig, ZooConfig
from sage_core.locate.attribution import LocateConfig

LCFG = LocateConfig(n_pairs=8, n_validate_top=2, n_validate_random=1, ig_steps=2)
SCORING_DIRS = ("scores", "reports", ".prefect-results")
UNIT_PREFIXES = ("score ",)  # task run names of score-sae, one per SAE and one for the controls (tasks/score.py)
LOAD_KINDS = ("model", "sae", "references", "model-copy", "moved")


def tiny_cfg(device: str = "cpu", **update) -> EvaluateConfig:
    """The integration tests' tiny evaluation (tests/integration/test_evaluate_flow.py)."""
    return EvaluateConfig(zoo=ZooConfig.tiny(), locate=LCFG, per_group=1, core_sequences=32, min_task_accuracy=0.0,
                          device=device).model_copy(update=update)


def forget_scores(home: Path) -> None:
    """Drop the scoring's outputs and Prefect's cache records: the next run rescores; zoo, ground truth, stores stay."""
    for d in SCORING_DIRS:
        shutil.rmtree(home / d, ignore_errors=True)


@dataclass
class Run:
    wall: float
    out: dict
    flow_run_id: str
    named_unit_times: list[tuple[str, float]] = field(default_factory=list)  # (task run name, seconds)

    @property
    def unit_times(self) -> list[float]:
        return [sec for _, sec in self.named_unit_times]

    @property
    def units(self) -> int:
        return len(self.named_unit_times)

    @property
    def loads(self) -> dict[str, int]:
        return self.out["loads"]

    @property
    def stage_wall(self) -> float:
        """The scoring stage's wall time, as the flow measured it (first unit submitted to last settled)."""
        return self.out["scoring"]["wall_s"]

    @property
    def unit_compute(self) -> float:
        """The scoring units' own compute, summed: each one's scoring and core metrics as it timed them where it ran
        (a task run's time would count its wait for a busy Dask worker too)."""
        return sum(u.get("score", 0.0) + u.get("core", 0.0) for u in self.out["scoring"]["units"])

    def orchestration_share(self, slots: int) -> float:
        """The share of the scoring stage's slot time (wall x units run at once) not spent in a unit's own work."""
        return 1 - self.unit_compute / (self.stage_wall * slots)


def evaluate_on(eng, cfg: EvaluateConfig, home: Path, timed_units: bool = True) -> Run:
    """One evaluate flow run on `eng`; fails loudly if any SAE or stage failed (a benchmark of failures means
    nothing). With `timed_units`, the run times of its scoring units as Prefect recorded them."""
    from flows.evaluate import evaluate

    t = time.perf_counter()
    from flows.engine import activated

    with activated(eng):
        state = eng.flow(evaluate)(cfg=cfg, home=str(home), return_state=True)
    wall = time.perf_counter() - t
    out = state.result(raise_on_failure=False)
    if isinstance(out, BaseException):
        raise out
    if out["n_failed"]:
        raise SystemExit(f"the evaluation had {out['n_failed']} failure(s): {state.message}")
    run = Run(wall, out, str(state.state_details.flow_run_id))
    if timed_units:
        run.named_unit_times = unit_run_times(run.flow_run_id)
    return run


def task_run_times(flow_run_id: str, prefixes: tuple[str, ...] = ("",), timeout_s: float = 60,
                   ) -> list[tuple[str, float]]:
    """(name, seconds) of each task run of the flow run whose name starts with one of `prefixes` (default: every
    one): how long it took where it ran (Prefect's task run time), once the server has every one as final and their
    count held still for a poll (a busy server records worker-side states late)."""
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline, last = time.monotonic() + timeout_s, None
    while True:
        runs, offset = [], 0
        with get_client(sync_client=True) as client:
            while True:
                page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
                                             limit=200, offset=offset)
                runs += page
                offset += len(page)
                if len(page) < 200:
                    break
        wanted = [r for r in runs if r.name.startswith(prefixes)]
        done = all(r.state is not None and r.state.is_final() for r in wanted)
        if done and wanted and len(wanted) == last:
            return [(r.name, r.total_run_time.total_seconds()) for r in wanted]
        if time.monotonic() > deadline:
            raise SystemExit(f"the Prefect server did not record every task run of flow run {flow_run_id} as final "
                             f"within {timeout_s:.0f} s")
        last = len(wanted) if done else None
        time.sleep(0.5)


def unit_run_times(flow_run_id: str, timeout_s: float = 60) -> list[tuple[str, float]]:
    """(name, seconds) of each scoring unit of the flow run (`task_run_times` of the unit task runs)."""
    return task_run_times(flow_run_id, UNIT_PREFIXES, timeout_s)


def _set_no_cache(on: bool) -> None:
    """In one process: SAGE_NO_LOAD_CACHE as `on` says (tasks.loaded reads it at every use)."""
    if on:
        os.environ["SAGE_NO_LOAD_CACHE"] = "1"
    else:
        os.environ.pop("SAGE_NO_LOAD_CACHE", None)


def no_cache(eng, on: bool) -> None:
    """SAGE_NO_LOAD_CACHE in the flow's process and in every live worker of `eng`, as a worker started with it would
    have it (each read checks the environment, nothing is decided at start-up)."""
    _set_no_cache(on)
    if eng.distributed:
        eng.client.run(_set_no_cache, on)


def slots(eng) -> int:
    """How many units the engine runs at once: the thread pool's size on `threads`, else one per worker."""
    return eng.parallel if not eng.distributed else eng.n_workers


def loads_line(loads: dict[str, int]) -> str:
    return ", ".join(f"{k} {loads.get(k, 0)}" for k in LOAD_KINDS)
