"""The units of scoring, typed: what one leaderboard row scores (`ScoringUnit`), what scoring on one task reads
(`TaskInputs`), the unit of work that is dispatched (`SAEWork`: one SAE's units on every task and its core metrics,
or the controls) and what it gives back (`SAEOutcome`). `tasks.plan` makes them from `sage_core.scoring.plan`'s
units, `tasks.score` scores them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sage_core.ground_truth.cross_section import CrossSection
from sage_core.model.hooks import short_hook
from sage_core.scoring import plan
from sage_core.scoring.rows import Kind, MappingName
from storage.refs import CoreRef, DatasetRef, ReferencesRef, SAERef, ScorePartRef, StoreRef


class ScoringUnit(BaseModel):
    """What one leaderboard row scores: `sage_core.scoring.plan.Unit` with typed SAE references; a `SAEWork`
    dispatches several."""

    model_config = ConfigDict(frozen=True)
    name: str
    kind: Kind
    mapping: MappingName
    saes: tuple[SAERef, ...] = ()  # (sae,) native, (before, after) projected, () control
    bracket: tuple[str, str] | None = None

    def reaches(self, section: CrossSection) -> bool:
        return plan.reaches(self, section)

    @property
    def label(self) -> str:
        """The unit's name with a native SAE's hook written short (blocks.1.hook_resid_post -> L1.resid_post)."""
        if self.mapping == "native" and self.saes and self.name.startswith(self.saes[0].hook):
            return short_hook(self.saes[0].hook) + self.name[len(self.saes[0].hook):]
        return self.name


class TaskInputs(BaseModel):
    """What scoring on one task reads: its prompts, its activation store and its cross-sections' references."""

    model_config = ConfigDict(frozen=True)
    dataset: DatasetRef
    store: StoreRef
    refs: ReferencesRef


class UnitJob(BaseModel):
    model_config = ConfigDict(frozen=True)
    unit: ScoringUnit
    task: str


class SAEWork(BaseModel):
    """The unit of work that is dispatched: one SAE's units on every task and its core metrics (`sae`), or the
    controls (`sae` None). `group` places it: SAEs at one hook go to one worker, which keeps what they share."""

    model_config = ConfigDict(frozen=True)
    name: str
    sae: SAERef | None = None
    jobs: tuple[UnitJob, ...] = ()
    group: str = ""

    @property
    def label(self) -> str:
        """`<name> on <tasks>[ + core]`: the Prefect UI's name of its task run."""
        tasks = sorted({j.task for j in self.jobs})
        short = short_hook(self.sae.hook) + self.name[len(self.sae.hook):] if (
            self.sae is not None and self.name.startswith(self.sae.hook)) else self.name
        what = " on " + ", ".join(tasks) if tasks else ""
        return f"{short}{what}{' + core' if self.sae is not None else ''}"


class JobOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)
    job: UnitJob
    part: ScorePartRef | None = None
    error: str | None = None
    input_fault: bool = False  # a damaged input (store, references): never the SAE's fault


class SAEOutcome(BaseModel):
    """What a `SAEWork` gave: per unit and task a part or an error, its core metrics, and where its time went."""

    model_config = ConfigDict(frozen=True)
    name: str
    parts: tuple[JobOutcome, ...] = ()
    core: CoreRef | None = None
    core_error: str | None = None
    seconds: dict[str, float] = {}
    built: int = 0  # parts computed now (the rest were whole on disk)
