"""Planning an evaluation: which inputs are acceptable, and which scoring units run on which task.

`check_inputs` refuses a bad evaluation before any work. Which units a set of resolved SAEs makes, what each task
gets of them and how they are dispatched is `sage_core.scoring.plan` (pure); here its results are typed
(`tasks.units`). The `plan-units` task reads what the plan needs (the ground truth's kept cross-sections, whether a
bracket's projector is the identity, from the model's weights) and plans, per task: the units that reach one of its
cross-sections, the hooks its capture must hold, and the SAEs that reach none (reported, not failed).
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, ConfigDict

from sage_core.config import EvaluateConfig
from sage_core.ground_truth.cross_section import CrossSection
from sage_core.model.capture import CaptureRequest
from sage_core.scoring import mapping as mp
from sage_core.scoring import plan as sp
from sage_core.scoring.plan import CONTROLS, sae_family, sublayer_brackets  # noqa: F401  (re-exported)
from sage_core.zoo.plan import plan_zoo
from storage.home import SageHome, check_run_name
from storage.refs import GroundTruthPartRef, GroundTruthRef, ModelRef, SAERef
from storage.sae_sources import check_specs, distinct_specs, list_zoo_saes
from tasks import loaded
from tasks.common import UNCACHED
from tasks.units import SAEWork, ScoringUnit, UnitJob


def check_inputs(cfg: EvaluateConfig, home: SageHome, run: str | None) -> None:
    """One-line errors, before any work: a bad run name (a deployment parameter too: never joined into a path
    unchecked), a pretrained model without SAEs, a spec that names nothing, two specs of different SAEs that share a
    name (`distinct_specs`: results are keyed by name)."""
    if run is not None:
        check_run_name(run)
    if cfg.pretrained and not cfg.saes:
        raise ValueError(f"no SAEs given for {cfg.pretrained}: pass --saes (a SAELens release/sae_id or directory); "
                         "the zoo's SAEs belong to the built-in model")
    if cfg.saes:
        name = cfg.model_zoo().model.name
        # the zoo's SAEs as built or as the zoo build will make them (the CLI checks the same names)
        zoo_names = [] if cfg.pretrained else sorted({s.name for s in plan_zoo(cfg.zoo).specs}
                                                     | set(list_zoo_saes(home, name)))
        check_specs(list(cfg.saes), home, name, zoo_names)
        distinct_specs(list(cfg.saes), home, name)


def plan_units(saes: list[SAERef], sections: list[CrossSection], cfg: EvaluateConfig,
               same_as_difference: frozenset[tuple[str, str]] = frozenset()) -> list[ScoringUnit]:
    """`sage_core.scoring.plan.plan_units` under the evaluation's settings, as typed units."""
    return [ScoringUnit(name=u.name, kind=u.kind, mapping=u.mapping, saes=u.saes, bracket=u.bracket)
            for u in sp.plan_units(saes, sections, cfg.projections, cfg.controls, same_as_difference)]


class TaskPlan(BaseModel):
    """One task's share of the plan: its kept cross-sections (ground-truth parts), what its capture must hold (every
    section's hook and every reaching SAE's), and the units that reach one of its sections."""

    model_config = ConfigDict(frozen=True)
    task: str
    parts: tuple[GroundTruthPartRef, ...]
    request: CaptureRequest
    units: tuple[ScoringUnit, ...]


class ScoringPlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    units: tuple[ScoringUnit, ...]
    tasks: tuple[TaskPlan, ...]  # the tasks with a kept cross-section
    empty: tuple[str, ...] = ()  # tasks whose fit kept no cross-section
    unreached: tuple[dict[str, str], ...] = ()  # native SAEs whose hook holds none of a task's kept cross-sections


def _plan_name(parameters: dict) -> str:
    n = len(parameters["tasks"])
    return f"plan-units {n} task{'s' if n != 1 else ''}"


@task(name="plan-units", task_run_name=_plan_name, **UNCACHED)
def plan_scoring(saes: list[SAERef], ground_truth: GroundTruthRef | None, tasks: list[str], model: ModelRef,
                 cfg: EvaluateConfig, home: str) -> ScoringPlan:
    """The run's scoring units, and per task the units that reach its kept cross-sections. A bracket whose projector
    P_c is the identity (read from the model's weights) is scored once, as projection.

    Not cached: it is cheap, and its inputs (the resolved SAEs) come from an uncached step."""
    parts_of = ground_truth.of_task if ground_truth else (lambda _t: [])  # no task ran: core metrics only
    sections = [p.section for p in (ground_truth.parts if ground_truth else ()) if p.task in tasks]
    brackets = sp.sublayer_brackets(sections) if cfg.projections else []
    if brackets:
        weights = loaded.shared_model(SageHome(home), model)
        same = frozenset(b for b in brackets if mp.projection_is_difference(weights, *b))
    else:
        same = frozenset()
    units = plan_units(saes, sections, cfg, same)
    plans, empty, unreached = [], [], []
    for t in tasks:
        parts = parts_of(t)
        if not parts:
            empty.append(t)
            continue
        reaching, hooks = sp.task_share(units, [p.section for p in parts])
        plans.append(TaskPlan(task=t, parts=tuple(parts), units=reaching,
                              request=CaptureRequest(hooks=hooks, positions="roles")))
        unreached += [{"sae": u.name, "task": t, "hook": u.saes[0].hook} for u in sp.unreached(units, reaching)]
    return ScoringPlan(units=tuple(units), tasks=tuple(plans), empty=tuple(empty), unreached=tuple(unreached))


def sae_works(plan: ScoringPlan, saes: list[SAERef]) -> list[SAEWork]:
    """The dispatched units: per SAE, its native units and the projected pairs it closes (the pair's later SAE) on
    every task, and its core metrics; then the controls on every task, as one more."""
    jobs = sp.dispatch(((u, tp.task) for tp in plan.tasks for u in tp.units), [s.name for s in saes])

    def typed(name: str) -> tuple[UnitJob, ...]:
        return tuple(UnitJob(unit=u, task=t) for u, t in jobs[name])

    out = [SAEWork(name=s.name, sae=s, jobs=typed(s.name), group=s.spec) for s in saes]
    if jobs.get(CONTROLS):
        out.append(SAEWork(name=CONTROLS, jobs=typed(CONTROLS), group=CONTROLS))
    return out
