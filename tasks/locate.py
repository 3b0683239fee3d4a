"""Location-search tasks: one per (task, attribute), then one that combines them into locations/<hash>/."""

from __future__ import annotations

from typing import Any

from prefect import task

from report.figures import atp_heatmaps
from sage_core.locate.attribution import LocateConfig, locate_attribute
from storage import locations as loc_store
from storage.datasets import read_prompts
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.zoo import load_model
from tasks.common import needs_build, stage_options, task_key

Manifest = dict[str, Any]


@task(name="locate-attribute", **stage_options())
def locate_one(model: Manifest, dataset: Manifest, task_name: str, attribute: str, cfg: LocateConfig,
               home: str) -> Manifest:
    key = task_key(locate_one, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.location_part(key)
    if needs_build(d):
        m = load_model(h.at(model["path"]))
        rows, summary = locate_attribute(m, read_prompts(h.at(dataset["path"])), task_name, attribute, cfg,
                                         m.tokenizer.pad_token_id)
        fig = atp_heatmaps(rows, m.cfg.n_layers, m.cfg.n_heads, f"{task_name} / {attribute}: AtP")
        loc_store.write_part(d, rows, summary, fig)
    return {"task": task_name, "attribute": attribute, "path": h.relative(d), "hash": dir_hash(d)}


@task(name="combine-locations", **stage_options())
def combine_locations(parts: list[Manifest], home: str) -> Manifest:
    key = task_key(combine_locations, locals())
    h = SageHome(home)
    d = h.locations_dir(key)
    if needs_build(d):
        loc_store.combine(d, [h.at(p["path"]) for p in parts])
    return {"path": h.relative(d), "ranking": h.relative(d / "ranking.parquet"),
            "validation": h.relative(d / "validation.parquet"), "hash": dir_hash(d)}
