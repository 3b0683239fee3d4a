"""Location-search tasks: one per (task, attribute), then one that combines them into locations/<hash>/."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from report.atp import atp_heatmaps
from sage_core.locate.attribution import LocateConfig, locate_attribute
from sage_core.model.devices import one_device
from storage import locations as loc_store
from storage.datasets import read_prompts
from storage.home import SageHome
from storage.records import dir_ref
from storage.refs import DatasetRef, LocationsPartRef, LocationsRef, ModelRef
from tasks import loaded, progress
from tasks.common import UNCACHED, artifact_slug, needs_build, rounded, stage_options, task_key


@task(name="locate-attribute", task_run_name="locate {dataset.task}/{attribute}", **stage_options(),
      **progress.hooks("locate"))
def locate_one(model: ModelRef, dataset: DatasetRef, attribute: str, cfg: LocateConfig, home: str,
               device: str = "cpu") -> LocationsPartRef:
    key = task_key(locate_one, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.location_part(key)
    if needs_build(d):
        with loaded.model(h, model, one_device(device)) as m:
            rows, summary = locate_attribute(m, read_prompts(h.at(dataset)), dataset.task, attribute, cfg,
                                             m.tokenizer.pad_token_id)
            fig = atp_heatmaps(rows, m.cfg.n_layers, m.cfg.n_heads, f"{dataset.task} / {attribute}: AtP")
            m.zero_grad(set_to_none=True)  # the backward passes left gradients on the shared instance: free them
        loc_store.write_part(d, rows, summary, fig)
    return dir_ref(h, LocationsPartRef, d, task=dataset.task, attribute=attribute)


@task(name="combine-locations", task_run_name=lambda parameters: f"combine-locations {len(parameters['parts'])} parts",
      **stage_options())
def combine_locations(parts: list[LocationsPartRef], home: str) -> LocationsRef:
    key = task_key(combine_locations, locals())
    h = SageHome(home)
    d = h.locations_dir(key)
    if needs_build(d):
        loc_store.combine(d, [h.at(p) for p in parts])
    return dir_ref(h, LocationsRef, d)


@task(name="publish-locations", task_run_name="publish-locations {model_name}", **UNCACHED)
def publish_locations(locations: LocationsRef, model_name: str, home: str) -> None:
    """The validation table (AtP against real patching) as an artifact of this model and the stable "latest" one."""
    rows = rounded(loc_store.read_validation(SageHome(home).at(locations)).to_dicts())
    for key in (f"locate-{artifact_slug(model_name)}-validation", "locate-validation"):
        create_table_artifact(key=key, table=rows,
                              description=f"{model_name}: AtP against real activation patching, per task and attribute")
