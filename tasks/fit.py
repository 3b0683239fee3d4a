"""Ground-truth tasks: fit every method's dictionary at one cross-section and measure its quality; combine."""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect import task

from sage_core.ground_truth.dictionaries import fit
from sage_core.ground_truth.sections import CrossSection, build_sets, quality
from storage import ground_truth as gt_store
from storage import locations as loc_store
from storage.activations import ActivationStore
from storage.atomic import StoreError
from storage.datasets import read_prompts
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.zoo import load_model
from tasks.common import needs_build, stage_options, task_key

Manifest = dict[str, Any]


def selected_sections(locations_dir, task_name: str, per_group: int) -> list[CrossSection]:
    """The location search's kept cross-sections of a task (the top `per_group` per attribute and group), deduped."""
    r = loc_store.read_ranking(locations_dir).filter((pl.col("task") == task_name) & pl.col("selected"))
    r = r.filter(pl.col("rank") <= per_group)
    seen, out = set(), []
    for row in r.sort("attribute", "group", "rank").iter_rows(named=True):
        key = (row["hook"], row["head"], row["role"])
        if key not in seen:
            seen.add(key)
            out.append(CrossSection(hook=row["hook"], head=row["head"], role=row["role"]))
    return out


@task(name="fit-section", **stage_options())
def fit_section(model: Manifest, dataset: Manifest, store: Manifest, task_name: str, section: CrossSection,
                attributes: list[str], methods: list[str], home: str) -> Manifest:
    key = task_key(fit_section, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.ground_truth_part(key)
    if needs_build(d):
        s = ActivationStore.open(h.at(store["path"]), expect={"dataset_hash": dataset["hash"]})
        if section.hook not in s.hooks:
            raise StoreError(f"cross-section {section.label} is not in the store {store['path']} (it holds "
                             f"{s.hooks}); capture that hook with --positions roles first")
        df = read_prompts(h.at(dataset["path"]))
        fit_acts, labels, clean, pairs = build_sets(df, s.read(section.hook), section, attributes, "test")
        m = load_model(h.at(model["path"]))
        dics, rows = {}, []
        for method in methods:
            dics[method] = fit(fit_acts, labels, method)
            for r in quality(m, dics[method], section, clean, pairs, m.tokenizer.pad_token_id):
                rows.append({"task": task_name, "hook": section.hook, "head": section.head, "role": section.role,
                             "method": method, **r})
        gt_store.write_section(d, dics, rows, {"model": model["hash"], "dataset": dataset["hash"],
                                               "cross_section": section.label, "task": task_name})
    return {"path": h.relative(d), "hash": dir_hash(d), "section": section.label, "section_obj": section.model_dump(),
            "task": task_name}


@task(name="combine-ground-truth", **stage_options())
def combine_ground_truth(parts: list[Manifest], home: str) -> Manifest:
    key = task_key(combine_ground_truth, locals())
    h = SageHome(home)
    d = h.ground_truth_dir(key)
    if needs_build(d):
        gt_store.combine(d, [str(h.at(p["path"])) for p in parts])
    return {"path": h.relative(d), "quality": h.relative(d / "quality.parquet"), "hash": dir_hash(d), "parts": parts}

