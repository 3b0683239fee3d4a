"""Flow `build-zoo`: tokenizer -> prompt datasets -> corpus -> model -> SAE activations -> SAEs (mapped) -> metrics ->
the zoo record.

Every step is a cached Prefect task keyed on its inputs' content hashes, its config and the code version, so a rerun
recomputes nothing, and a crash resumes at the first step whose output is not complete on disk.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from flows.settings import running_in
from sage_core.config import ZooConfig
from sage_core.zoo.plan import plan_zoo
from storage.hashing import source_version
from storage.home import SageHome
from storage.refs import ZooRef
from storage.zoo import read_zoo_record
from tasks import progress
from tasks import zoo as zt
from tasks.common import ManifestSerializer, in_home, output_key


@flow(name="build-zoo", flow_run_name="build-zoo {cfg.model.name}", task_runner=ThreadPoolTaskRunner(max_workers=2),
      log_prints=True, result_serializer=ManifestSerializer())
def build_zoo(cfg: ZooConfig = ZooConfig(), home: str | None = None, refresh: bool = False) -> ZooRef:
    """Build (or reuse) the built-in model and its SAE zoo under SAGE_HOME; returns the zoo's references (paths
    relative to SAGE_HOME). The cache records live in SAGE_HOME/.prefect-results whoever runs the flow (CLI or
    deployment)."""
    h = SageHome(home)
    h.ensure_writable()
    plan = plan_zoo(cfg)  # bad input fails here, before any training
    if not refresh and (done := zoo_if_whole(cfg, h)) is not None:
        return done  # this build is whole on disk: no task run, not even a cache lookup
    root = str(h.root)

    def at_home(task):
        # refresh first: a task given its record store by `in_home` cannot be copied by `with_options` again
        return in_home(task.with_options(refresh_cache=True) if refresh else task, h)

    eng = engine.current()
    one = eng.unit_devices(cfg.device, 1)[0]
    tok = at_home(zt.make_tokenizer)(cfg, root)
    datasets = at_home(zt.make_dataset).map(list(cfg.tasks), unmapped(cfg), unmapped(tok), unmapped(root))
    corpus = at_home(zt.make_corpus)(cfg, tok, root)
    # what reads or trains the model runs on the engine (a Dask worker, on its device), never in this process
    model = at_home(zt.train_model).submit(cfg, tok, corpus, root, device=one).result()
    model_eval = at_home(zt.evaluate_model).submit(model, datasets, root, device=one)
    acts = at_home(zt.capture_sae_activations).submit(cfg, model, corpus, plan.hooks, root, device=one).result()
    progress.begin("zoo-saes", len(plan.specs))
    try:
        saes = at_home(zt.train_sae).map(plan.specs, unmapped(cfg), unmapped(model), unmapped(acts), unmapped(root),
                                  device=eng.unit_devices(cfg.device, len(plan.specs))).result()
    finally:
        progress.end("zoo-saes")
    sae_eval = at_home(zt.evaluate_saes).submit(cfg, model, saes, acts, corpus, root, device=one).result()
    model_eval = model_eval.result()
    zoo = ZooRef(model=model, datasets=tuple(d.result() for d in datasets), corpus=corpus, model_eval=model_eval,
                 saes=tuple(saes), sae_eval=sae_eval)
    return at_home(zt.record_zoo)(zoo, zoo_key(cfg), root)


def zoo_key(cfg: ZooConfig) -> str:
    """A zoo build is valid for its config and the code it runs: this flow's wiring, its plan of the SAEs (`sage_core.zoo.plan`
    sets each one's spec and training settings) and its tasks (the same key function as theirs)."""
    # the plan by its source: it imports the settings module (for the config's type), whose code is no zoo input
    return output_key("build-zoo", {"cfg": cfg, "wiring": source_version("flows.build_zoo", "sage_core.zoo.plan")},
                      ("tasks.zoo",))


def zoo_if_whole(cfg: ZooConfig, home: SageHome) -> ZooRef | None:
    """The last build's references when that build is for this config and code and all of it is still on disk: the
    flow's own check at its start, which saves its ~45 cache lookups on every later evaluation."""
    return read_zoo_record(home, cfg.model.name, zoo_key(cfg), [s.name for s in plan_zoo(cfg).specs])


def run_build_zoo(cfg: ZooConfig = ZooConfig(), home: str | None = None, refresh: bool = False,
                  cluster: str = "threads") -> ZooRef:
    """Check the config (bad input fails here, before Prefect starts), then run the flow on the engine `cluster`
    names (`flows.engine`) with Prefect's result store inside SAGE_HOME, so the cache lives (and dies) with the
    data."""
    plan_zoo(cfg)
    with running_in(SageHome(home), cluster, cfg.device) as eng:
        return eng.flow(build_zoo)(cfg=cfg, home=home, refresh=refresh)
