"""Prefect tasks that build the zoo. Each takes typed references (`storage.refs`), reads through `storage`, computes in
`sage_core`, writes through `storage`, and returns a reference (path + content hash), never tensors.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import polars as pl
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sage_core.model import transformer as model_mod
from sage_core.model.devices import one_device
from sage_core.model.hooks import short_sae
from sage_core.model.pretrained import TRUST_ENV, check_remote_code
from sage_core.model.tokenizer import build_tokenizer
from sage_core.prompts import corpus as corpus_mod
from sage_core.prompts.adapt import pose_task
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig
from sage_core.zoo import train as sae_zoo
from storage import records
from storage import zoo as zoo_store
from storage.datasets import corpus_ref, prompts_ref, read_corpus, read_prompts, write_corpus, write_prompts
from storage.hashing import stable_hash
from storage.home import SageHome
from storage.refs import CorpusRef, DatasetRef, ModelRef, TableRef, TokenizerRef, ZooActivationsRef, ZooRef, ZooSAERef
from tasks import loaded, progress
from tasks.common import (
    UNCACHED,
    artifact_slug,
    cfg_parts,
    log,
    needs_build,
    rounded,
    same_file,
    stage_options,
    task_key,
    whole_dir,
    whole_keyed_dir,
    whole_parent,
)

if TYPE_CHECKING:  # annotations only: the zoo's code version does not depend on the evaluation settings there
    from sage_core.config import ZooConfig


def model_check(ref: ModelRef, home: SageHome, key: str) -> str | None:
    """The zoo model: complete, with the recorded content hash, and trained under this key."""
    return zoo_store.trained_model_problem(home, ref, key)


def recorded(ref: ZooRef, home: SageHome, _key: str) -> str | None:
    """The zoo record holds exactly this build."""
    return zoo_store.zoo_record_problem(home, ref)


def zoo_vocabulary(cfg: ZooConfig) -> set[str]:
    words = corpus_mod.background_vocabulary()
    for name in cfg.tasks:
        words |= get_task(name).vocabulary()
    return words


# each zoo task keys on the parts of the zoo config it reads (`cfg_parts`): an SAE setting retrains that SAE only
@task(name="make-tokenizer", task_run_name="make-tokenizer {cfg.model.name}",
      **stage_options(whole_keyed_dir, cfg_parts(tasks="tasks", model_name="model.name")))
def make_tokenizer(cfg: ZooConfig, home: str) -> TokenizerRef:
    key = task_key(make_tokenizer, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    path = h.tokenizer_dir(cfg.model.name)
    if needs_build(path) or records.key_problem(path, key):
        zoo_store.save_tokenizer(path, build_tokenizer(zoo_vocabulary(cfg)), key=key)
    return zoo_store.find_tokenizer(h, cfg.model.name)


@task(name="make-dataset", task_run_name="make-dataset {task_name}",
      **stage_options(whole_parent, cfg_parts(prompts="prompts", n_ctx="model.n_ctx")))
def make_dataset(task_name: str, cfg: ZooConfig, tokenizer: TokenizerRef, home: str) -> DatasetRef:
    key = task_key(make_dataset, locals())
    h = SageHome(home)
    dcfg = DatasetConfig(task=task_name, n_train=cfg.prompts.n_train, n_test=cfg.prompts.n_test, seed=cfg.prompts.seed)
    if needs_build(h.dataset_dir(task_name, key)):
        tok = zoo_store.load_tokenizer(h.at(tokenizer))
        df, posed = pose_task(get_task(task_name), dcfg, tok, max_len=cfg.model.n_ctx)
        log().info(f"prompts: {posed.summary()}")
        write_prompts(h, task_name, key, df, meta={
            "config": dcfg.model_dump(), "tokenizer": tokenizer.hash,
            "posed": {"skipped": posed.skipped, "note": posed.detail(),
                      **posed.model_dump(include={"kept", "removed", "dropped"})}})
    return prompts_ref(h, task_name, key)


@task(name="make-corpus", task_run_name="make-corpus {cfg.model.name}",
      **stage_options(whole_parent, cfg_parts(tasks="tasks", corpus="corpus", seed="prompts.seed",
                                              heldout_fraction="heldout_fraction")))
def make_corpus(cfg: ZooConfig, tokenizer: TokenizerRef, home: str) -> CorpusRef:
    key = task_key(make_corpus, locals())
    h = SageHome(home)
    if needs_build(h.corpus_dir(key)):
        tok = zoo_store.load_tokenizer(h.at(tokenizer))
        lines = corpus_mod.build_corpus([get_task(t) for t in cfg.tasks], cfg.corpus, cfg.prompts.seed)
        ids = tok(lines, add_special_tokens=False)["input_ids"]
        n_held = max(1, int(len(lines) * cfg.heldout_fraction))
        df = pl.DataFrame({
            "text": lines,
            "tokens": [[tok.bos_token_id, *x] for x in ids],
            "split": ["heldout"] * n_held + ["train"] * (len(lines) - n_held),
        }, schema={"text": pl.String, "tokens": pl.List(pl.Int32), "split": pl.String})
        write_corpus(h, key, df, meta={"config": cfg.corpus.model_dump()})
    return corpus_ref(h, key)


def _corpus_tokens(h: SageHome, corpus: CorpusRef, split: str, pad_id: int) -> torch.Tensor:
    df = read_corpus(h.at(corpus)).filter(pl.col("split") == split)
    return model_mod.pad_sequences(df["tokens"].to_list(), pad_id)


@task(name="train-model", task_run_name="train-model {cfg.model.name}",
      **stage_options(model_check, cfg_parts(model="model", train="train")))
def train_model(cfg: ZooConfig, tokenizer: TokenizerRef, corpus: CorpusRef, home: str,
                device: str = "cpu") -> ModelRef:
    key = task_key(train_model, locals())
    h = SageHome(home)
    name, path = cfg.model.name, h.model_dir(cfg.model.name)
    # build_key: the settings and data (a model of other settings is the user's, never replaced); key: those + code
    build_key = stable_hash(cfg.model, cfg.train, tokenizer.hash, corpus.hash)
    if zoo_store.model_is_complete(path):
        meta = zoo_store.read_train_meta(path)
        if meta.get("build_key") != build_key:
            raise zoo_store.StoreError(
                f"{path} holds a model built from another config; choose another --model-name or delete that "
                "directory")
        if meta.get("key") == key:
            return zoo_store.find_model(h, name)
        log().warning(f"{path} was trained by other code (key {meta.get('key')}, now {key}): retraining it")
    logger = log()
    tok = zoo_store.load_tokenizer(h.at(tokenizer))
    tokens = _corpus_tokens(h, corpus, "train", tok.pad_token_id)
    model = model_mod.build_model(cfg.model, len(tok), device=one_device(device))  # saved back on the CPU
    t0 = time.perf_counter()

    def on_loss(step: int, loss: float) -> None:
        if step % 250 == 0 or step == cfg.train.steps - 1:
            logger.info(f"step {step}/{cfg.train.steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)")

    progress.begin("zoo-model", cfg.train.steps)
    try:
        losses = model_mod.train_model(model, tokens, tok.pad_token_id, cfg.train,
                                       on_step=progress.step_callback("zoo-model"), on_loss=on_loss)
    finally:
        progress.end("zoo-model")
    meta = {"key": key, "build_key": build_key, "train_seconds": time.perf_counter() - t0, "final_loss": losses[-1],
            "first_loss": losses[0], "n_sequences": len(tokens),
            "config": {"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")}}
    zoo_store.save_model(h, name, model, meta)
    return zoo_store.find_model(h, name)


@task(name="import-model", task_run_name="import-model {pretrained}", **UNCACHED)
def import_model(pretrained: str, zoo_name: str, home: str, device: str = "cpu") -> ModelRef:
    """`HookedTransformer.from_pretrained(pretrained)` saved once under zoo/<zoo_name>/model (config, processed weights,
    tokenizer), so every later stage loads it like the built-in model and keys its results on its content hash.

    Loaded and processed on the CPU whatever `device` says (it is only checked): the weights are saved, not run, and
    folding them on a GPU would round them differently, so the model's content hash would depend on the device.

    Not cached by Prefect: the on-disk check is as cheap, and it notices a deleted directory."""
    one_device(device)  # a device this machine lacks fails here, like every other stage's
    h = SageHome(home)
    path = h.model_dir(zoo_name)
    if zoo_store.model_is_complete(path):
        source = zoo_store.read_train_meta(path).get("pretrained")
        if source != pretrained:
            raise zoo_store.StoreError(f"{path} holds {source or 'a model SAGE trained'}, not {pretrained!r}; "
                                       "delete that directory or use another SAGE_HOME")
    else:
        from transformer_lens import HookedTransformer

        # a deployment calls this without the CLI: its repository's code runs only where the user allowed it
        check_remote_code(pretrained, os.environ.get(TRUST_ENV) == "1")
        m = HookedTransformer.from_pretrained(pretrained, device="cpu")
        if m.tokenizer is None or m.tokenizer.bos_token_id is None:
            raise ValueError(f"{pretrained}: its tokenizer has no BOS token; SAGE prompts start with BOS")
        zoo_store.save_tokenizer(h.tokenizer_dir(zoo_name), m.tokenizer)
        zoo_store.save_model(h, zoo_name, m, {"pretrained": pretrained,
                                              "loader": "transformer_lens.HookedTransformer.from_pretrained"})
    return zoo_store.find_model(h, zoo_name)


@task(name="find-model", task_run_name="find-model {name}", **{**UNCACHED, "retries": 0})
def find_model(name: str, home: str) -> tuple[ModelRef, TokenizerRef]:
    """The zoo model `name` and its tokenizer as they are on disk (built or imported before); one line if missing."""
    h = SageHome(home)
    return zoo_store.find_model(h, name), zoo_store.find_tokenizer(h, name)


@task(name="evaluate-model", task_run_name=lambda parameters: f"evaluate-model {zoo_store.zoo_name(parameters['model'])}",
      **stage_options(same_file))
def evaluate_model(model: ModelRef, datasets: list[DatasetRef], home: str, device: str = "cpu") -> TableRef:
    """Per task, on held-out test prompts: accuracy (answer outranks the competing answer) and mean logit diff."""
    h = SageHome(home)
    rows = []
    with loaded.model(h, model, one_device(device)) as m:
        for ds in datasets:
            if ds.skipped:  # a task the tokenizer cannot pose has no prompts to measure
                continue
            df = read_prompts(h.at(ds)).filter((pl.col("split") == "test") & pl.col("pair_of").is_null())
            logits = model_mod.final_logits(m, df["tokens"].to_list(), m.tokenizer.pad_token_id)
            met = model_mod.answer_metrics(logits, torch.as_tensor(df["answer_token"].to_list()),
                                           torch.as_tensor(df["cf_answer_token"].to_list()))
            rows.append({"task": ds.task, **met})
    return zoo_store.write_zoo_table(h, model, "task_metrics", pl.DataFrame(rows))


@task(name="capture-sae-activations", task_run_name="capture-sae-activations {cfg.model.name}",
      **stage_options(whole_dir, cfg_parts(model_name="model.name", n_tokens="saes.n_tokens",
                                           n_eval_tokens="saes.n_eval_tokens")))
def capture_sae_activations(cfg: ZooConfig, model: ModelRef, corpus: CorpusRef, hooks: list[str],
                            home: str, device: str = "cpu") -> ZooActivationsRef:
    """One forward pass over corpus tokens caches every hook the zoo trains on (train and held-out sets); the
    activations come back to the CPU to be written."""
    key = task_key(capture_sae_activations, locals())
    h = SageHome(home)
    if needs_build(h.sae_training_acts(cfg.model.name, key)):
        tensors = {}
        with loaded.model(h, model, one_device(device)) as m:
            pad = m.tokenizer.pad_token_id
            for split, n_tokens in (("train", cfg.saes.n_tokens), ("heldout", cfg.saes.n_eval_tokens)):
                acts = sae_zoo.capture_activations(m, _corpus_tokens(h, corpus, split, pad), pad, hooks, n_tokens)
                tensors.update({f"{split}.{hook}": a for hook, a in acts.items()})
        zoo_store.write_activations(h, cfg.model.name, key, tensors, meta={"model": model.hash, "corpus": corpus.hash})
    return zoo_store.activations_ref(h, cfg.model.name, key)


@task(name="train-sae", task_run_name=lambda parameters: f"train-sae {short_sae(parameters['spec'].name)}",
      **stage_options(whole_keyed_dir, cfg_parts(model_name="model.name")), **progress.hooks("zoo-saes"))
def train_sae(spec: sae_zoo.SAESpec, cfg: ZooConfig, model: ModelRef, acts: ZooActivationsRef,
              home: str, device: str = "cpu") -> ZooSAERef:
    """An SAE's directory name says only hook, architecture and width: its marker holds the key (spec, training
    settings, model, activations, code), and an SAE under this name with another key is retrained and swapped."""
    key = task_key(train_sae, locals())
    h = SageHome(home)
    path = h.sae_dir(cfg.model.name, spec.name)
    problem = records.output_problem(path) or records.key_problem(path, key)
    if problem:
        if path.exists():
            log().warning(f"{problem}: retraining it")
        acts_t = zoo_store.read_activations(h, acts, "train", spec.hook)
        t0 = time.perf_counter()
        sae = sae_zoo.train_sae(spec, acts_t, model_name=cfg.model.name, device=one_device(device))  # back on the CPU
        zoo_store.save_sae(path, sae, meta={"key": key, "spec": spec.model_dump(), "model": model.hash,
                                            "acts": acts.hash, "train_seconds": time.perf_counter() - t0},
                           replace=True)
    return zoo_store.zoo_sae_ref(h, cfg.model.name, spec.name)


@task(name="evaluate-saes", task_run_name="evaluate-saes {cfg.model.name}",
      **stage_options(same_file, cfg_parts(model_name="model.name", n_ce_sequences="saes.n_ce_sequences")))
def evaluate_saes(cfg: ZooConfig, model: ModelRef, saes: list[ZooSAERef], acts: ZooActivationsRef, corpus: CorpusRef,
                  home: str, device: str = "cpu") -> TableRef:
    """Explained variance, L0, dead share on held-out activations; CE loss recovered on held-out text."""
    h = SageHome(home)
    dev = one_device(device)
    zero: dict[str, float] = {}  # zero-ablation CE, once per hook
    rows = []
    with loaded.model(h, model, dev) as m:
        pad = m.tokenizer.pad_token_id
        tokens = _corpus_tokens(h, corpus, "heldout", pad)[: cfg.saes.n_ce_sequences]
        clean = sae_zoo.mean_ce(m, tokens, pad)
        for s in saes:
            sae, meta = zoo_store.load_zoo_sae(h, s, dev)
            hook = sae.cfg.metadata.hook_name
            held = zoo_store.read_activations(h, acts, "heldout", hook)
            if hook not in zero:
                zero[hook] = sae_zoo.mean_ce(m, tokens, pad, hook, torch.zeros_like)
            rows.append({
                "sae": s.name, "hook": hook, "architecture": meta["spec"]["architecture"], "d_sae": sae.cfg.d_sae,
                **sae_zoo.reconstruction_metrics(sae, held),
                **sae_zoo.ce_loss_recovered(m, sae, tokens, pad, clean=clean, zero=zero[hook]),
                "train_seconds": meta.get("train_seconds"),
            })
    return zoo_store.write_zoo_table(h, model, "sae_metrics", pl.DataFrame(rows))


@task(name="record-zoo", task_run_name=lambda parameters: f"record-zoo {zoo_store.zoo_name(parameters['zoo'].model)}",
      **stage_options(recorded))
def record_zoo(zoo: ZooRef, key: str, home: str) -> ZooRef:
    """Record the finished build (what `zoo_if_whole` reads) and publish its tables as artifacts of the flow run,
    under keys of this zoo and the stable "latest" keys."""
    h = SageHome(home)
    name = zoo_store.zoo_name(zoo.model)
    zoo_store.write_zoo_record(h, name, key, zoo)
    saes = [{k: r[k] for k in ("sae", "explained_variance", "l0", "dead_share", "ce_loss_recovered")}
            for r in (zoo_store.read_zoo_table(h, zoo.sae_eval) if zoo.sae_eval else [])]
    model_rows = zoo_store.read_zoo_table(h, zoo.model_eval)
    best = max(saes, key=lambda r: r["explained_variance"]) if saes else None
    for prefix in (f"zoo-{artifact_slug(name)}", "zoo"):
        create_table_artifact(key=f"{prefix}-task-metrics", table=rounded(model_rows),
                              description=f"Zoo model {name}: held-out accuracy and logit difference per task")
        if saes:
            create_table_artifact(key=f"{prefix}-sae-metrics", table=rounded(saes),
                                  description=f"SAE zoo of {name}: metrics on held-out text")
        if best:
            create_markdown_artifact(key=f"{prefix}-summary", markdown=(
                f"# SAE zoo of {name}\n\n{len(saes)} SAEs. Best explained variance: **{best['sae']}** "
                f"({best['explained_variance']:.3f}, L0 {best['l0']:.1f}).\n"))
    return zoo


@task(name="publish-model-eval", task_run_name="publish-model-eval {pretrained}", **UNCACHED)
def publish_model_eval(pretrained: str, model_eval: TableRef, home: str) -> None:
    """A pretrained model's task metrics as an artifact (the evaluation says which tasks it does)."""
    key = f"pretrained-{artifact_slug(pretrained)}-task-metrics"
    rows = zoo_store.read_zoo_table(SageHome(home), model_eval)
    for k in (key, "pretrained-task-metrics"):
        create_table_artifact(key=k, table=rounded(rows),
                              description=f"{pretrained}: accuracy and logit difference per task (held-out prompts)")
