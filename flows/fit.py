"""Flow `fit`: locate (cached) -> capture the kept cross-sections at role positions -> fit and judge dictionaries at
each cross-section (mapped) -> ground_truth/<hash>/quality.parquet, recorded for the next evaluation."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from flows.locate import locate
from sage_core.config import ZooConfig
from sage_core.ground_truth.dictionaries import METHODS
from sage_core.locate.config import LocateConfig
from sage_core.prompts.library import get_task
from storage import ground_truth as gt_store
from storage.hashing import source_version
from storage.home import SageHome
from storage.refs import GroundTruthRef, ModelRef, TokenizerRef
from storage.zoo import find_model, find_tokenizer, model_problem
from tasks import capture as ct
from tasks import progress
from tasks.common import ManifestSerializer, in_home, output_key
from tasks.fit import combine_ground_truth, fit_section, record_ground_truth, role_request, select_sections
from tasks.report import judge_ground_truth
from tasks.zoo import find_model as find_model_task
from tasks.zoo import make_dataset


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"fit {p['cfg'].model.name} {len(p.get('tasks') or p['cfg'].tasks)} tasks"


@flow(name="fit", flow_run_name=_run_name, task_runner=ThreadPoolTaskRunner(max_workers=2),
      result_serializer=ManifestSerializer())
def fit_ground_truth(cfg: ZooConfig = ZooConfig(), locate_cfg: LocateConfig = LocateConfig(), home: str | None = None,
                     per_group: int = 3, methods: tuple[str, ...] = METHODS,
                     tasks: list[str] | None = None) -> GroundTruthRef:
    """`tasks`: a subset of the zoo's tasks (default all); the zoo config itself stays as built."""
    h = SageHome(home)
    h.ensure_writable()
    root = str(h.root)
    task_names = list(tasks or cfg.tasks)
    if (done := ground_truth_if_whole(cfg, locate_cfg, h, per_group, methods, task_names)) is not None:
        return done  # this fit is whole on disk: no task run, not even a cache lookup
    locations = engine.current().flow(locate)(cfg=cfg, locate_cfg=locate_cfg, home=root, tasks=task_names)
    model, tok = find_model_task(cfg.model.name, root)
    datasets = in_home(make_dataset, h).map(task_names, unmapped(cfg), unmapped(tok), unmapped(root)).result()
    sections = {ds.task: select_sections(locations, ds.task, per_group, root) for ds in datasets}
    located = [ds for ds in datasets if sections[ds.task]]  # a task with no kept cross-section has nothing to fit
    requests = {ds.task: role_request(sections[ds.task]) for ds in located}
    eng = engine.current()
    # what reads the model runs on the engine (a Dask worker, on its device), never in this process
    preps = {ds.task: in_home(ct.prepare_capture, h).submit(model, ds, requests[ds.task], root) for ds in located}
    stores = {task: f.result() for task, f in preps.items()}
    progress.begin("capture", sum(s.n_chunks for s in stores.values()))
    try:
        shards = {ds.task: ct.capture_shard.submit(stores[ds.task], model, ds, requests[ds.task], 0, 1, root,
                                                   device=eng.unit_devices(cfg.device, 1)[0]) for ds in located}
        sealed = {ds.task: ct.finalize_capture.submit(stores[ds.task], ds, [shards[ds.task]], root) for ds in located}
        sealed = {task: f.result() for task, f in sealed.items()}
    finally:
        progress.end("capture")
    jobs = [(ds, sealed[ds.task], s, get_task(ds.task).attribute_names()) for ds in located for s in sections[ds.task]]
    progress.begin("fit", len(jobs))
    try:
        parts = in_home(fit_section, h).map(unmapped(model), [j[0] for j in jobs], [j[1] for j in jobs],
                                            [j[2] for j in jobs], [j[3] for j in jobs], unmapped(list(methods)),
                                            unmapped(root), device=eng.unit_devices(cfg.device, len(jobs)))
        out = in_home(combine_ground_truth, h)(parts, root)
    finally:
        progress.end("fit")
    key = fit_key(model, tok, cfg, locate_cfg, per_group, methods, task_names)
    return record_ground_truth(out, key, cfg.model.name, judge_ground_truth(out, task_names, root), root)


def fit_key(model: ModelRef, tok: TokenizerRef, cfg: ZooConfig, locate_cfg: LocateConfig, per_group: int,
            methods: tuple[str, ...] | list[str], tasks: list[str]) -> str:
    """Everything that decides the fit flow's output: model and tokenizer content, dataset and search settings, and
    the code it runs: this flow's wiring and the location search's (their sources), and their stages' code (the same
    key function as theirs)."""
    return output_key("fit", dict(model=model, tok=tok, cfg=cfg, locate_cfg=locate_cfg, per_group=per_group,
                                  methods=list(methods), tasks=list(tasks),
                                  wiring=source_version("flows.fit", "flows.locate")),
                      ("tasks.zoo", "tasks.locate", "tasks.capture", "tasks.fit"))


def ground_truth_if_whole(cfg: ZooConfig, locate_cfg: LocateConfig, home: SageHome, per_group: int,
                          methods: tuple[str, ...] = METHODS, tasks: list[str] | None = None) -> GroundTruthRef | None:
    """The fit flow's last output for exactly these inputs when all of it is still on disk: the flow's own check at
    its start, which saves its cached lookups (location search, datasets, captures, one per cross-section) on a re-evaluation."""
    name = cfg.model.name
    if model_problem(home.model_dir(name)):
        return None
    key = fit_key(find_model(home, name), find_tokenizer(home, name), cfg, locate_cfg, per_group, methods,
                  list(tasks or cfg.tasks))
    return gt_store.read_gt_record(home, key)
