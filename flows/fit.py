"""Flow `fit`: locate (cached) -> capture the kept cross-sections at role positions -> fit and judge dictionaries at
each cross-section (mapped) -> ground_truth/<hash>/quality.parquet."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.locate import locate
from report.verdicts import ground_truth_verdicts
from sage_core.config import ZooConfig
from sage_core.ground_truth.dictionaries import METHODS
from sage_core.locate.attribution import LocateConfig
from sage_core.model.capture import CaptureRequest
from sage_core.prompts.library import get_task
from storage import ground_truth as gt_store
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.records import all_complete, read_record, write_record
from tasks import capture as ct
from tasks.common import ManifestSerializer, in_home, output_key
from tasks.fit import combine_ground_truth, fit_section, selected_sections
from tasks.zoo import make_dataset


@flow(name="fit", task_runner=ThreadPoolTaskRunner(max_workers=2), result_serializer=ManifestSerializer())
def fit_ground_truth(cfg: ZooConfig = ZooConfig(), locate_cfg: LocateConfig = LocateConfig(), home: str | None = None,
                     per_group: int = 3, methods: tuple[str, ...] = METHODS,
                     tasks: list[str] | None = None) -> dict[str, Any]:
    """`tasks`: a subset of the zoo's tasks (default all); the zoo config itself stays as built."""
    h = SageHome(home)
    h.ensure_writable()
    root, name = str(h.root), cfg.model.name
    task_names = list(tasks or cfg.tasks)
    locations = locate(cfg=cfg, locate_cfg=locate_cfg, home=root, tasks=task_names)
    model = ct.model_manifest(h, name)
    tok = tokenizer_manifest(h, name)
    datasets = in_home(make_dataset, h).map(task_names, unmapped(cfg), unmapped(tok), unmapped(root))
    jobs = []
    for t, ds in zip(task_names, datasets, strict=True):
        ds = ds.result()
        sections = selected_sections(h.at(locations["path"]), t, per_group)
        request = CaptureRequest(hooks=tuple(sorted({s.hook for s in sections})), positions="roles")
        prep = in_home(ct.prepare_capture, h)(model, ds, request, root)
        shard = ct.capture_shard(prep, model, request, 0, 1, root)
        store = ct.finalize_capture(prep, [shard], root)
        attrs = get_task(t).attribute_names()
        jobs += [(ds, store, t, s, attrs) for s in sections]
    parts = in_home(fit_section, h).map([unmapped(model)] * len(jobs), [j[0] for j in jobs], [j[1] for j in jobs],
                                        [j[2] for j in jobs], [j[3] for j in jobs], [j[4] for j in jobs],
                                        unmapped(list(methods)), unmapped(root))
    out = in_home(combine_ground_truth, h)([p.result() for p in parts], root)
    key = fit_key(model, tok, cfg, locate_cfg, per_group, methods, task_names)
    write_record(h.ground_truth_record(key), key, out)
    q = gt_store.read_quality(h.at(out["path"]))
    create_table_artifact(key="ground-truth-quality", table=q.to_dicts(),
                          description="Supervised dictionaries: sufficiency, necessity, edit accuracy per cross-section")
    create_table_artifact(key="ground-truth-verdicts", table=ground_truth_verdicts(q).to_dicts(),
                          description="Per attribute: does a cross-section meet the quality bar, and if not, why")
    return out


def tokenizer_manifest(h: SageHome, name: str) -> dict[str, str]:
    return {"path": h.relative(h.tokenizer_dir(name)), "hash": dir_hash(h.tokenizer_dir(name))}


def fit_key(model: dict, tok: dict, cfg: ZooConfig, locate_cfg: LocateConfig, per_group: int,
            methods: tuple[str, ...] | list[str], tasks: list[str]) -> str:
    """Everything that decides the fit flow's output: model and tokenizer content, dataset and search settings, and
    the code it runs: this flow's wiring, the location search's, and their stages' (the same key function as theirs)."""
    return output_key("fit", dict(model=model, tok=tok, cfg=cfg, locate_cfg=locate_cfg, per_group=per_group,
                                  methods=list(methods), tasks=list(tasks)),
                      ("flows.fit", "flows.locate", "tasks.zoo", "tasks.locate", "tasks.capture", "tasks.fit"))


def ground_truth_if_whole(cfg: ZooConfig, locate_cfg: LocateConfig, home: SageHome, per_group: int,
                          methods: tuple[str, ...] = METHODS, tasks: list[str] | None = None) -> dict[str, Any] | None:
    """The fit flow's last output for exactly these inputs when all of it is still on disk: a cheap check that saves
    the subflow's cached lookups (location search, datasets, captures, one per cross-section) on a re-evaluation."""
    name = cfg.model.name
    if not home.model_dir(name).is_dir() or not home.tokenizer_dir(name).is_dir():
        return None
    model = ct.model_manifest(home, name)
    key = fit_key(model, tokenizer_manifest(home, name), cfg, locate_cfg, per_group, methods, list(tasks or cfg.tasks))
    return read_record(home.ground_truth_record(key), key,
                       lambda m: all_complete([home.at(m["path"]), *(home.at(p["path"]) for p in m["parts"])]))
