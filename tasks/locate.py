"""Location-search tasks: one per (task, attribute), then one that combines them into locations/<hash>/."""

from __future__ import annotations

from typing import Any

from prefect import task

from sage_core.attribution import LocateConfig, locate_attribute
from sage_core.plots import atp_heatmaps
from storage import locations as loc_store
from storage.datasets import read_prompts
from storage.hashing import dir_hash, stable_hash
from storage.home import SageHome
from storage.zoo import load_model
from tasks.common import TASK_DEFAULTS

Manifest = dict[str, Any]


@task(name="locate-attribute", **TASK_DEFAULTS)
def locate_one(model: Manifest, dataset: Manifest, task_name: str, attribute: str, cfg: LocateConfig,
               home: str) -> Manifest:
    h = SageHome(home)
    key = stable_hash(model["hash"], dataset["hash"], task_name, attribute, cfg)
    d = h.location_part(key)
    if not (d / "_COMPLETE.json").is_file():
        m = load_model(model["path"])
        rows, summary = locate_attribute(m, read_prompts(dataset["path"]), task_name, attribute, cfg,
                                         m.tokenizer.pad_token_id)
        fig = atp_heatmaps(rows, m.cfg.n_layers, m.cfg.n_heads, f"{task_name} / {attribute}: AtP")
        loc_store.write_part(d, rows, summary, fig)
    return {"task": task_name, "attribute": attribute, "path": str(d), "hash": dir_hash(d)}


@task(name="combine-locations", **TASK_DEFAULTS)
def combine_locations(parts: list[Manifest], home: str) -> Manifest:
    h = SageHome(home)
    d = h.locations_dir(stable_hash([p["hash"] for p in parts]))
    loc_store.combine(d, [p["path"] for p in parts])
    return {"path": str(d), "ranking": str(d / "ranking.parquet"), "validation": str(d / "validation.parquet"),
            "hash": dir_hash(d)}
