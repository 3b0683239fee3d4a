"""Flow `locate`: for every task and attribute of the zoo model, rank every component by attribution patching,
select the cross-sections, and validate the ranking by real activation patching."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sage_core.config import ZooConfig
from sage_core.locate.attribution import LocateConfig
from sage_core.prompts.library import get_task
from storage import locations as loc_store
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.zoo import model_is_complete
from tasks.capture import model_manifest
from tasks.common import ManifestSerializer, in_home
from tasks.locate import combine_locations, locate_one
from tasks.zoo import make_dataset


@flow(name="locate", task_runner=ThreadPoolTaskRunner(max_workers=2), result_serializer=ManifestSerializer())
def locate(cfg: ZooConfig = ZooConfig(), locate_cfg: LocateConfig = LocateConfig(), home: str | None = None,
           attributes: list[str] | None = None, tasks: list[str] | None = None) -> dict[str, Any]:
    h = SageHome(home)
    h.ensure_writable()
    name = cfg.model.name
    if not model_is_complete(h.model_dir(name)):
        raise FileNotFoundError(f"no built model {name!r} under {h.root}; run `sage zoo build` first")
    root = str(h.root)
    model = model_manifest(h, name)
    tok = {"path": h.relative(h.tokenizer_dir(name)), "hash": dir_hash(h.tokenizer_dir(name))}
    task_names = list(tasks or cfg.tasks)
    unknown = sorted(set(task_names) - set(cfg.tasks))
    if unknown:
        raise ValueError(f"tasks {unknown} are not in the zoo's tasks {list(cfg.tasks)}")
    wanted = [(t, a) for t in task_names for a in get_task(t).attribute_names()
              if attributes is None or a in attributes]
    if not wanted:
        raise ValueError(f"no attribute matches {attributes}; the tasks have "
                         f"{sorted({a for t in task_names for a in get_task(t).attribute_names()})}")
    datasets = dict(zip(task_names, in_home(make_dataset, h).map(task_names, unmapped(cfg), unmapped(tok), unmapped(root)),
                        strict=True))
    jobs = [(t, a, datasets[t]) for t, a in wanted]
    parts = in_home(locate_one, h).map([unmapped(model)] * len(jobs), [j[2] for j in jobs], [j[0] for j in jobs],
                           [j[1] for j in jobs], unmapped(locate_cfg), unmapped(root))
    out = in_home(combine_locations, h)([p.result() for p in parts], root)
    val = loc_store.read_validation(h.at(out["path"]))
    create_table_artifact(key="locate-validation", table=val.to_dicts(),
                          description="AtP against real activation patching, per task and attribute")
    return out
