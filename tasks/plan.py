"""Planning an evaluation: which inputs are acceptable, and which scoring units run on which task.

`check_inputs` refuses a bad evaluation before any work. `plan_units` (a plain function: its tests need no Prefect)
says which units a set of resolved SAEs makes; the `plan-units` task applies it to the ground truth's kept
cross-sections, per task: the units that reach one of them, the hooks its capture must hold, and the SAEs that reach
none (reported, not failed).
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, ConfigDict

from sage_core.config import EvaluateConfig
from sage_core.ground_truth.sections import CrossSection
from sage_core.model.capture import CaptureRequest
from sage_core.model.hooks import short_hook
from sage_core.scoring import mapping as mp
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


def sae_family(s: SAERef) -> str:
    """SAEs of one family share everything but their hook: the zoo's `<hook>--<arch>-<width>`, a registry release,
    or architecture-width."""
    if "--" in s.name:
        return s.name.split("--", 1)[1]
    if s.source == "registry":
        return s.spec.replace(":", "/").split("/", 1)[0]
    return f"{s.arch}-{s.d_sae}"


def plan_units(saes: list[SAERef], sections: list[CrossSection], cfg: EvaluateConfig,
               same_as_difference: frozenset[tuple[str, str]] = frozenset()) -> list[ScoringUnit]:
    """Native units, projection / difference units for every residual family bracketing a sub-layer cross-section,
    and the two controls. A bracket in `same_as_difference` (P_c is the identity there) gets no `difference` unit: it
    would repeat the projection's figures row for row."""
    units = [ScoringUnit(name=s.name, kind="trained", mapping="native", saes=(s,)) for s in saes]
    if cfg.projections:
        by_family: dict[str, dict[str, SAERef]] = {}
        for s in saes:
            hook = mp.canonical_hook(s.hook)
            if "resid" in hook:
                by_family.setdefault(sae_family(s), {})[hook] = s
        for fam, members in sorted(by_family.items()):
            for before, after in sublayer_brackets(sections):
                if before in members and after in members:
                    for mapping in ("projection", "difference"):
                        if mapping == "difference" and (before, after) in same_as_difference:
                            continue
                        name = f"{fam}:{mapping}[{short_hook(before)}->{short_hook(after)}]"
                        units.append(ScoringUnit(name=name, kind="trained", mapping=mapping,
                                                 saes=(members[before], members[after]), bracket=(before, after)))
    if cfg.controls:
        units += [ScoringUnit(name="control:oracle", kind="oracle", mapping="control"),
                  ScoringUnit(name="control:random", kind="random", mapping="control")]
    return units


def sublayer_brackets(sections: list[CrossSection]) -> list[tuple[str, str]]:
    """The (before, after) residual hooks around every sub-layer cross-section."""
    return sorted({mp.bracket(c.hook) for c in sections if mp.is_sublayer(c.hook)})


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
    brackets = sublayer_brackets(sections) if cfg.projections else []
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
        reaching = tuple(u for u in units if any(u.reaches(p.section) for p in parts))
        hooks = {p.section.hook for p in parts} | {s.hook for u in reaching for s in u.saes}
        plans.append(TaskPlan(task=t, parts=tuple(parts), units=reaching,
                              request=CaptureRequest(hooks=tuple(sorted(hooks)), positions="roles")))
        unreached += [{"sae": u.name, "task": t, "hook": u.saes[0].hook} for u in units
                      if u.kind == "trained" and u.mapping == "native" and u not in reaching]
    return ScoringPlan(units=tuple(units), tasks=tuple(plans), empty=tuple(empty), unreached=tuple(unreached))


def sae_works(plan: ScoringPlan, saes: list[SAERef]) -> list[SAEWork]:
    """The dispatched units: per SAE, its native units and the projected pairs it closes (the pair's later SAE) on
    every task, and its core metrics; then the controls on every task, as one more."""
    jobs: dict[str, list[UnitJob]] = {s.name: [] for s in saes}
    for tp in plan.tasks:
        for u in tp.units:
            owner = u.saes[-1].name if u.saes else CONTROLS
            jobs.setdefault(owner, []).append(UnitJob(unit=u, task=tp.task))
    out = [SAEWork(name=s.name, sae=s, jobs=tuple(jobs[s.name]), group=s.spec) for s in saes]
    if jobs.get(CONTROLS):
        out.append(SAEWork(name=CONTROLS, jobs=tuple(jobs[CONTROLS]), group=CONTROLS))
    return out


CONTROLS = "controls"
