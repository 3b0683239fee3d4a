"""Flow `locate`: for every task and attribute of the zoo model, rank every component by attribution patching,
select the cross-sections, and validate the ranking by real activation patching."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from sage_core.config import ZooConfig
from sage_core.locate.config import LocateConfig
from sage_core.prompts.library import task_attributes
from storage.home import SageHome
from storage.refs import LocationsRef
from tasks import progress
from tasks.common import ManifestSerializer, in_home
from tasks.locate import combine_locations, locate_one, publish_locations
from tasks.zoo import find_model, make_dataset


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"locate {p['cfg'].model.name} {len(p.get('tasks') or p['cfg'].tasks)} tasks"


@flow(name="locate", flow_run_name=_run_name, task_runner=ThreadPoolTaskRunner(max_workers=2),
      result_serializer=ManifestSerializer())
def locate(cfg: ZooConfig = ZooConfig(), locate_cfg: LocateConfig = LocateConfig(), home: str | None = None,
           attributes: list[str] | None = None, tasks: list[str] | None = None) -> LocationsRef:
    h = SageHome(home)
    h.ensure_writable()
    root = str(h.root)
    task_names = list(tasks or cfg.tasks)
    cfg.check_tasks(task_names)
    wanted = task_attributes(task_names, attributes)
    model, tok = find_model(cfg.model.name, root)
    datasets = dict(zip(task_names, in_home(make_dataset, h).map(task_names, unmapped(cfg), unmapped(tok),
                                                                 unmapped(root)), strict=True))
    progress.begin("locate", len(wanted))
    try:
        parts = in_home(locate_one, h).map(unmapped(model), [datasets[t] for t, _ in wanted], [a for _, a in wanted],
                                           unmapped(locate_cfg), unmapped(root),
                                           device=engine.current().unit_devices(cfg.device, len(wanted)))
        out = in_home(combine_locations, h)(parts, root)
    finally:
        progress.end("locate")
    publish_locations(out, cfg.model.name, root)
    return out
