"""Prefect tasks that build the zoo. Each reads through `storage`, computes in `sage_core`, writes through `storage`,
and returns a small manifest (paths + content hashes), never tensors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
from prefect import task

from sage_core.model import transformer as model_mod
from sage_core.model.pretrained import TRUST_ENV, check_remote_code
from sage_core.model.tokenizer import build_tokenizer
from sage_core.prompts import corpus as corpus_mod
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts
from sage_core.zoo import train as sae_zoo
from storage import records
from storage import zoo as zoo_store
from storage.datasets import read_corpus, read_prompts, write_corpus, write_prompts
from storage.hashing import dir_hash, file_hash, stable_hash
from storage.home import SageHome
from tasks.common import (
    UNCACHED,
    cfg_parts,
    log,
    needs_build,
    same_file,
    stage_options,
    task_key,
    whole_dir,
    whole_keyed_dir,
    whole_parent,
)

if TYPE_CHECKING:  # annotations only: the zoo's code version does not depend on the evaluation settings there
    from sage_core.config import ZooConfig

Manifest = dict[str, Any]


def model_check(m: Manifest, home: SageHome, key: str) -> str | None:
    """The zoo model: complete, with the recorded content hash, and trained under this key."""
    path = home.at(m["path"])
    if not zoo_store.model_is_complete(path):
        return f"{path} is missing or incomplete"
    if zoo_store.model_hash(path) != m["hash"]:
        return f"{path} changed since it was trained"
    theirs = zoo_store.read_train_meta(path).get("key")
    return None if theirs == key else f"{path} was trained by other inputs or code (key {theirs}, now {key})"


def zoo_vocabulary(cfg: ZooConfig) -> set[str]:
    words = corpus_mod.background_vocabulary()
    for name in cfg.tasks:
        words |= get_task(name).vocabulary()
    return words


# each zoo task keys on the parts of the zoo config it reads (`cfg_parts`): an SAE setting retrains that SAE only
@task(name="make-tokenizer", **stage_options(whole_keyed_dir, cfg_parts(tasks="tasks", model_name="model.name")))
def make_tokenizer(cfg: ZooConfig, home: str) -> Manifest:
    key = task_key(make_tokenizer, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    path = h.tokenizer_dir(cfg.model.name)
    if needs_build(path) or records.key_problem(path, key):
        zoo_store.save_tokenizer(path, build_tokenizer(zoo_vocabulary(cfg)), key=key)
    return {"path": h.relative(path), "hash": dir_hash(path)}


@task(name="make-dataset", **stage_options(whole_parent, cfg_parts(prompts="prompts", n_ctx="model.n_ctx")))
def make_dataset(task_name: str, cfg: ZooConfig, tokenizer: Manifest, home: str) -> Manifest:
    key = task_key(make_dataset, locals())
    h = SageHome(home)
    dcfg = DatasetConfig(task=task_name, n_train=cfg.prompts.n_train, n_test=cfg.prompts.n_test, seed=cfg.prompts.seed)
    path = h.prompts_path(task_name, key)
    if needs_build(path.parent):
        tok = zoo_store.load_tokenizer(h.at(tokenizer["path"]))
        df = generate_prompts(get_task(task_name), dcfg, tok, max_len=cfg.model.n_ctx)
        write_prompts(h, task_name, key, df, meta={"config": dcfg.model_dump(), "tokenizer": tokenizer["hash"]})
    return {"task": task_name, "path": h.relative(path), "hash": file_hash(path)}


@task(name="make-corpus", **stage_options(whole_parent, cfg_parts(tasks="tasks", corpus="corpus", seed="prompts.seed",
                                                               heldout_fraction="heldout_fraction")))
def make_corpus(cfg: ZooConfig, tokenizer: Manifest, home: str) -> Manifest:
    key = task_key(make_corpus, locals())
    h = SageHome(home)
    d = h.corpus_dir(key)
    if needs_build(d):
        tok = zoo_store.load_tokenizer(h.at(tokenizer["path"]))
        lines = corpus_mod.build_corpus([get_task(t) for t in cfg.tasks], cfg.corpus, cfg.prompts.seed)
        ids = tok(lines, add_special_tokens=False)["input_ids"]
        n_held = max(1, int(len(lines) * cfg.heldout_fraction))
        df = pl.DataFrame({
            "text": lines,
            "tokens": [[tok.bos_token_id, *x] for x in ids],
            "split": ["heldout"] * n_held + ["train"] * (len(lines) - n_held),
        }, schema={"text": pl.String, "tokens": pl.List(pl.Int32), "split": pl.String})
        write_corpus(h, key, df, meta={"config": cfg.corpus.model_dump()})
    path = d / "corpus.parquet"
    return {"path": h.relative(path), "hash": file_hash(path)}


def _corpus_tokens(h: SageHome, corpus: Manifest, split: str, pad_id: int) -> torch.Tensor:
    df = read_corpus(h.at(corpus["path"])).filter(pl.col("split") == split)
    return model_mod.pad_sequences(df["tokens"].to_list(), pad_id)


@task(name="train-model", **stage_options(model_check, cfg_parts(model="model", train="train")))
def train_model(cfg: ZooConfig, tokenizer: Manifest, corpus: Manifest, home: str) -> Manifest:
    key = task_key(train_model, locals())
    h = SageHome(home)
    path = h.model_dir(cfg.model.name)
    # build_key: the settings and data (a model of other settings is the user's, never replaced); key: those + code
    build_key = stable_hash(cfg.model, cfg.train, tokenizer["hash"], corpus["hash"])
    if zoo_store.model_is_complete(path):
        meta = zoo_store.read_train_meta(path)
        if meta.get("build_key") != build_key:
            raise zoo_store.StoreError(
                f"{path} holds a model built from another config; choose another --model-name or delete that "
                "directory")
        if meta.get("key") == key:
            return {"path": h.relative(path), "hash": zoo_store.model_hash(path), "build_key": build_key}
        log().warning(f"{path} was trained by other code (key {meta.get('key')}, now {key}): retraining it")
    logger = log()
    tok = zoo_store.load_tokenizer(h.at(tokenizer["path"]))
    tokens = _corpus_tokens(h, corpus, "train", tok.pad_token_id)
    model = model_mod.build_model(cfg.model, len(tok))
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if step % 250 == 0 or step == cfg.train.steps - 1:
            logger.info(f"step {step}/{cfg.train.steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)")

    losses = model_mod.train_model(model, tokens, tok.pad_token_id, cfg.train, on_step=on_step)
    meta = {"key": key, "build_key": build_key, "train_seconds": time.perf_counter() - t0, "final_loss": losses[-1],
            "first_loss": losses[0], "n_sequences": len(tokens),
            "config": {"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")}}
    zoo_store.save_model(h, cfg.model.name, model, meta)
    return {"path": h.relative(path), "hash": zoo_store.model_hash(path), "build_key": build_key}


@task(name="import-model", **UNCACHED)
def import_model(pretrained: str, zoo_name: str, home: str) -> Manifest:
    """`HookedTransformer.from_pretrained(pretrained)` saved once under zoo/<zoo_name>/model (config, processed weights,
    tokenizer), so every later stage loads it like the built-in model and keys its results on its content hash.

    Not cached by Prefect: the on-disk check is as cheap, and it notices a deleted directory."""
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
    return {"path": h.relative(path), "hash": zoo_store.model_hash(path)}


@task(name="evaluate-model", **stage_options(same_file))
def evaluate_model(model: Manifest, datasets: list[Manifest], home: str) -> Manifest:
    """Per task, on held-out test prompts: accuracy (answer outranks the competing answer) and mean logit diff."""
    h = SageHome(home)
    m = zoo_store.load_model(h.at(model["path"]))
    rows = []
    for ds in datasets:
        df = read_prompts(h.at(ds["path"])).filter((pl.col("split") == "test") & pl.col("pair_of").is_null())
        logits = model_mod.final_logits(m, df["tokens"].to_list(), m.tokenizer.pad_token_id)
        met = model_mod.answer_metrics(logits, torch.as_tensor(df["answer_token"].to_list()),
                                       torch.as_tensor(df["cf_answer_token"].to_list()))
        rows.append({"task": ds["task"], **met})
    table = pl.DataFrame(rows)
    name = Path(model["path"]).parent.name  # the zoo directory (an imported model's cfg.model_name may differ)
    path = zoo_store.write_table(h.zoo_report(name) / "task_metrics.parquet", table)
    return {"path": h.relative(path), "hash": file_hash(path), "rows": rows}


@task(name="capture-sae-activations", **stage_options(whole_dir, cfg_parts(
    model_name="model.name", n_tokens="saes.n_tokens", n_eval_tokens="saes.n_eval_tokens")))
def capture_sae_activations(cfg: ZooConfig, model: Manifest, corpus: Manifest, hooks: list[str], home: str) -> Manifest:
    """One forward pass over corpus tokens caches every hook the zoo trains on (train and held-out sets)."""
    key = task_key(capture_sae_activations, locals())
    h = SageHome(home)
    path = h.sae_training_acts(cfg.model.name, key)
    if needs_build(path):
        m = zoo_store.load_model(h.at(model["path"]))
        pad = m.tokenizer.pad_token_id
        tensors = {}
        for split, n_tokens in (("train", cfg.saes.n_tokens), ("heldout", cfg.saes.n_eval_tokens)):
            acts = sae_zoo.capture_activations(m, _corpus_tokens(h, corpus, split, pad), pad, hooks, n_tokens)
            tensors.update({f"{split}.{hook}": a for hook, a in acts.items()})
        zoo_store.save_tensors(path, tensors, meta={"model": model["hash"], "corpus": corpus["hash"]})
    return {"path": h.relative(path), "hash": key}


@task(name="train-sae", **stage_options(whole_keyed_dir, cfg_parts(model_name="model.name")))
def train_sae(spec: sae_zoo.SAESpec, cfg: ZooConfig, model: Manifest, acts: Manifest, home: str) -> Manifest:
    """An SAE's directory name says only hook, architecture and width: its marker holds the key (spec, training
    settings, model, activations, code), and an SAE under this name with another key is retrained and swapped."""
    key = task_key(train_sae, locals())
    h = SageHome(home)
    path = h.sae_dir(cfg.model.name, spec.name)
    problem = records.output_problem(path) or records.key_problem(path, key)
    if problem:
        if path.exists():
            log().warning(f"{problem}: retraining it")
        acts_t = zoo_store.load_tensor(h.at(acts["path"]), f"train.{spec.hook}")
        t0 = time.perf_counter()
        sae = sae_zoo.train_sae(spec, acts_t, model_name=cfg.model.name)
        zoo_store.save_sae(path, sae, meta={"key": key, "spec": spec.model_dump(), "model": model["hash"],
                                            "acts": acts["hash"], "train_seconds": time.perf_counter() - t0},
                           replace=True)
    return {"name": spec.name, "path": h.relative(path), "hash": dir_hash(path)}


@task(name="evaluate-saes", **stage_options(same_file, cfg_parts(model_name="model.name",
                                                                n_ce_sequences="saes.n_ce_sequences")))
def evaluate_saes(cfg: ZooConfig, model: Manifest, saes: list[Manifest], acts: Manifest, corpus: Manifest,
                  home: str) -> Manifest:
    """Explained variance, L0, dead share on held-out activations; CE loss recovered on held-out text."""
    h = SageHome(home)
    m = zoo_store.load_model(h.at(model["path"]))
    pad = m.tokenizer.pad_token_id
    tokens = _corpus_tokens(h, corpus, "heldout", pad)[: cfg.saes.n_ce_sequences]
    clean = sae_zoo.mean_ce(m, tokens, pad)
    zero: dict[str, float] = {}  # zero-ablation CE, once per hook
    rows = []
    for s in saes:
        sae = zoo_store.load_sae(h.at(s["path"]))
        meta = zoo_store.sae_meta(h.at(s["path"]))
        hook = sae.cfg.metadata.hook_name
        held = zoo_store.load_tensor(h.at(acts["path"]), f"heldout.{hook}")
        if hook not in zero:
            zero[hook] = sae_zoo.mean_ce(m, tokens, pad, hook, torch.zeros_like)
        rows.append({
            "sae": s["name"], "hook": hook, "architecture": meta["spec"]["architecture"], "d_sae": sae.cfg.d_sae,
            **sae_zoo.reconstruction_metrics(sae, held),
            **sae_zoo.ce_loss_recovered(m, sae, tokens, pad, clean=clean, zero=zero[hook]),
            "train_seconds": meta.get("train_seconds"),
        })
    table = pl.DataFrame(rows)
    path = zoo_store.write_table(h.zoo_report(cfg.model.name) / "sae_metrics.parquet", table)
    return {"path": h.relative(path), "hash": file_hash(path)}
