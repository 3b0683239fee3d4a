"""Ground-truth tasks: pick a task's cross-sections, fit every method's dictionary at one cross-section and measure
its quality, combine the cross-sections into ground_truth/<hash>/."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from sage_core.ground_truth.dictionaries import fit
from sage_core.ground_truth.sections import CrossSection, build_sets, quality
from sage_core.model.capture import CaptureRequest
from sage_core.model.devices import one_device
from sage_core.model.hooks import short_section
from storage import ground_truth as gt_store
from storage import locations as loc_store
from storage.atomic import StoreError
from storage.capture import open_sealed
from storage.datasets import read_prompts
from storage.home import SageHome
from storage.records import dir_ref
from storage.refs import DatasetRef, GroundTruthPartRef, GroundTruthRef, LocationsRef, ModelRef, StoreRef
from tasks import loaded, progress
from tasks.common import UNCACHED, artifact_slug, needs_build, rounded, stage_options, task_key


@task(name="select-sections", task_run_name="select-sections {task_name}", **UNCACHED)
def select_sections(locations: LocationsRef, task_name: str, per_group: int, home: str) -> list[CrossSection]:
    """The location search's kept cross-sections of a task (the top `per_group` per attribute and group), deduped."""
    return loc_store.selected_sections(SageHome(home), locations, task_name, per_group)


def role_request(sections: list[CrossSection]) -> CaptureRequest:
    """The capture every cross-section of a task reads: their hooks at the task's role positions."""
    return CaptureRequest(hooks=tuple(sorted({s.hook for s in sections})), positions="roles")


@task(name="fit-section",
      task_run_name=lambda parameters: f"fit {parameters['dataset'].task} {short_section(parameters['section'])}",
      **stage_options(), **progress.hooks("fit"))
def fit_section(model: ModelRef, dataset: DatasetRef, store: StoreRef, section: CrossSection, attributes: list[str],
                methods: list[str], home: str, device: str = "cpu") -> GroundTruthPartRef:
    """Every method's dictionary at `section` and its quality, fit and judged on `device`; written from the CPU."""
    key = task_key(fit_section, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.ground_truth_part(key)
    if needs_build(d):
        dev = one_device(device)
        s = open_sealed(h, store, dataset)
        if section.hook not in s.hooks:
            raise StoreError(f"cross-section {section.label} is not in the store {store.path} (it holds "
                             f"{s.hooks}); capture that hook with --positions roles first")
        fit_acts, labels, clean, pairs = build_sets(read_prompts(h.at(dataset)), s.read(section.hook), section,
                                                    attributes, "test", device=dev)
        dics, rows = {}, []
        with loaded.model(h, model, dev) as m:
            for method in methods:
                dics[method] = fit(fit_acts, labels, method)
                for r in quality(m, dics[method], section, clean, pairs, m.tokenizer.pad_token_id):
                    rows.append({"task": dataset.task, "hook": section.hook, "head": section.head,
                                 "role": section.role, "method": method, **r})
        on_cpu = {method: dic.to("cpu") for method, dic in dics.items()}  # files are the same whatever the device
        gt_store.write_section(d, on_cpu, rows, {"model": model.hash, "dataset": dataset.hash,
                                                 "cross_section": section.label, "task": dataset.task})
    return dir_ref(h, GroundTruthPartRef, d, task=dataset.task, section=section)


@task(name="combine-ground-truth",
      task_run_name=lambda parameters: f"combine-ground-truth {len(parameters['parts'])} cross-sections",
      **stage_options())
def combine_ground_truth(parts: list[GroundTruthPartRef], home: str) -> GroundTruthRef:
    key = task_key(combine_ground_truth, locals())
    h = SageHome(home)
    d = h.ground_truth_dir(key)
    if needs_build(d):
        gt_store.combine(d, [str(h.at(p)) for p in parts])
    return dir_ref(h, GroundTruthRef, d, parts=tuple(parts))


@task(name="record-ground-truth", task_run_name="record-ground-truth {model_name}", **UNCACHED)
def record_ground_truth(ground_truth: GroundTruthRef, key: str, model_name: str, verdicts: list[dict[str, Any]],
                        home: str) -> GroundTruthRef:
    """Record the fit flow's output under its key (what `ground_truth_if_whole` reads) and publish the dictionaries'
    quality and the per-attribute `verdicts` as artifacts of this model and the stable "latest" ones."""
    h = SageHome(home)
    gt_store.write_gt_record(h, key, ground_truth)
    rows = rounded(gt_store.read_quality(h.at(ground_truth)).to_dicts())
    for prefix in (f"ground-truth-{artifact_slug(model_name)}", "ground-truth"):
        create_table_artifact(key=f"{prefix}-quality", table=rows, description=(
            f"{model_name}: supervised dictionaries' sufficiency, necessity, edit accuracy per cross-section"))
        create_table_artifact(key=f"{prefix}-verdicts", table=rounded(verdicts), description=(
            f"{model_name}: per attribute, does a cross-section meet the quality bar, and if not, why"))
    return ground_truth
