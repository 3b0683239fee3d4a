"""Typed references: what one task hands the next. A reference names an output by its content hash and its path
relative to SAGE_HOME (`SageHome.at(ref)` is the only way to turn one into a path), plus the few facts a downstream
task plans with (a dataset's task, a cross-section, an SAE's hook). Never big data: that stays on disk.

Each class carries a `ref` tag, so a reference persisted as JSON (Prefect's cache records, the flow records) comes back
as the same class (`revive`); no record ever names code to import.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sage_core.ground_truth.cross_section import CrossSection


class Ref(BaseModel):
    """An output on disk: `path` relative to SAGE_HOME, `hash` of its content (what keys everything after it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    hash: str


class TokenizerRef(Ref):
    ref: Literal["tokenizer"] = "tokenizer"


class ModelRef(Ref):
    ref: Literal["model"] = "model"
    build_key: str | None = None  # the key of the zoo build that trained it (None: imported or found as built)


class DatasetRef(Ref):
    """A task's prompt table (prompts.parquet)."""

    ref: Literal["dataset"] = "dataset"
    task: str
    skipped: str | None = None  # why the model's tokenizer cannot pose the task (the table is then empty)
    note: str = ""  # what fitting the task's vocabulary to the tokenizer dropped


class CorpusRef(Ref):
    ref: Literal["corpus"] = "corpus"


class TableRef(Ref):
    """A small table the zoo writes (model or SAE metrics). Its rows are read from the file, checked against `hash`
    (`storage.zoo.read_zoo_table`): a cache record holds no number."""

    ref: Literal["table"] = "table"


class ZooActivationsRef(Ref):
    """The zoo's training activations per hook (safetensors)."""

    ref: Literal["zoo-activations"] = "zoo-activations"


class ZooSAERef(Ref):
    """A zoo SAE's directory (SAELens' save layout)."""

    ref: Literal["zoo-sae"] = "zoo-sae"
    name: str


class StoreRef(Ref):
    """An activation store (zarr); `hash` is empty until the store is sealed (`finalize-capture`)."""

    ref: Literal["store"] = "store"
    n_chunks: int
    model_hash: str
    dataset_hash: str
    request_hash: str = ""
    prompts_path: str = ""  # the prompt table the store computes from (relative to SAGE_HOME)


class LocationsPartRef(Ref):
    ref: Literal["locations-part"] = "locations-part"
    task: str
    attribute: str


class LocationsRef(Ref):
    """The combined location search: ranking.parquet, validation.parquet."""

    ref: Literal["locations"] = "locations"


class GroundTruthPartRef(Ref):
    """Every method's dictionary and its quality at one cross-section of one task."""

    ref: Literal["ground-truth-part"] = "ground-truth-part"
    task: str
    section: CrossSection


class GroundTruthRef(Ref):
    """The combined ground truth (quality.parquet) and its parts."""

    ref: Literal["ground-truth"] = "ground-truth"
    parts: tuple[GroundTruthPartRef, ...] = ()

    def of_task(self, task: str) -> list[GroundTruthPartRef]:
        return [p for p in self.parts if p.task == task]


class SAERef(BaseModel):
    """A resolved, checked SAE. `spec` says how to load it (zoo:<name>, a directory, a registry release/id), `hash`
    is its weights' content hash; `path` is its directory under SAGE_HOME where it has one (zoo SAEs), else ""."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ref: Literal["sae"] = "sae"
    spec: str
    name: str
    hook: str
    hash: str
    arch: str
    d_sae: int
    d_in: int
    source: str
    path: str = ""


class ReferencesRef(Ref):
    """Per cross-section of one task: the ground-truth dictionary's effects, the background means (scoring input)."""

    ref: Literal["references"] = "references"
    task: str


class ScorePartRef(Ref):
    """One scoring unit's rows on one task."""

    ref: Literal["score-part"] = "score-part"
    sae: str
    task: str


class CoreRef(Ref):
    """One SAE's core metrics on background text (read from the checked file: `storage.scores.read_core`)."""

    ref: Literal["core"] = "core"
    sae: str


class ZooRef(BaseModel):
    """What a zoo build (or a pretrained model's preparation) hands the evaluation: the model, a prompt table per
    task, the background corpus, the model's task metrics, and the zoo's SAEs and their metrics (none for a pretrained
    model: its SAEs come from --saes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ref: Literal["zoo"] = "zoo"
    model: ModelRef
    datasets: tuple[DatasetRef, ...]
    corpus: CorpusRef
    model_eval: TableRef
    saes: tuple[ZooSAERef, ...] = ()
    sae_eval: TableRef | None = None

    def dataset(self, task: str) -> DatasetRef:
        for d in self.datasets:
            if d.task == task:
                return d
        raise KeyError(f"no prompt table for task {task!r} in this zoo (it has {[d.task for d in self.datasets]})")


class RunRef(Ref):
    """A run's result files: scores/<run>/ (scores, leaderboard, failures, meta)."""

    ref: Literal["run"] = "run"
    run: str


class ReportRef(Ref):
    """A run's report: reports/<run>/ (README.md linking scores/<run>/'s tables, plots)."""

    ref: Literal["report"] = "report"
    run: str


REF_TYPES: dict[str, type[BaseModel]] = {
    cls.model_fields["ref"].default: cls
    for cls in (TokenizerRef, ModelRef, DatasetRef, CorpusRef, TableRef, ZooActivationsRef, ZooSAERef, StoreRef,
                LocationsPartRef, LocationsRef, GroundTruthPartRef, GroundTruthRef, SAERef, ReferencesRef,
                ScorePartRef, CoreRef, ZooRef, RunRef, ReportRef)
}


def revive(value: Any) -> Any:
    """JSON (as `dump` wrote it) back to references: every dict whose `ref` tag names a reference class becomes one,
    inside lists and dicts too; anything else is returned as it is."""
    if isinstance(value, dict):
        value = {k: revive(v) for k, v in value.items()}
        cls = REF_TYPES.get(value.get("ref")) if isinstance(value.get("ref"), str) else None
        return cls.model_validate(value) if cls is not None else value
    if isinstance(value, list):
        return [revive(v) for v in value]
    return value


def dump(value: Any) -> Any:
    """References (anywhere inside lists, tuples and dicts) to JSON-ready dicts that carry their `ref` tag."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    return value
