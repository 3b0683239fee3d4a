"""Prefect tasks that build the zoo. Each reads through `storage`, computes in `sage_core`, writes through `storage`,
and returns a small manifest (paths + content hashes), never tensors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
from prefect import get_run_logger, task

from sage_core import corpus as corpus_mod
from sage_core import model as model_mod
from sage_core import sae_zoo
from sage_core.config import ZooConfig
from sage_core.task import DatasetConfig, generate_prompts
from sage_core.task_library import get_task
from sage_core.tokenizer import build_tokenizer
from storage import zoo as zoo_store
from storage.atomic import is_complete
from storage.datasets import read_corpus, read_prompts, write_corpus, write_prompts
from storage.hashing import dir_hash, file_hash, stable_hash
from storage.home import SageHome
from tasks.common import TASK_DEFAULTS

Manifest = dict[str, Any]


def zoo_vocabulary(cfg: ZooConfig) -> set[str]:
    words = corpus_mod.background_vocabulary()
    for name in cfg.tasks:
        words |= get_task(name).vocabulary()
    return words


@task(name="make-tokenizer", **TASK_DEFAULTS)
def make_tokenizer(cfg: ZooConfig, home: str) -> Manifest:
    h = SageHome(home)
    path = h.tokenizer_dir(cfg.model.name)
    zoo_store.save_tokenizer(path, build_tokenizer(zoo_vocabulary(cfg)))
    return {"path": str(path), "hash": dir_hash(path)}


@task(name="make-dataset", **TASK_DEFAULTS)
def make_dataset(task_name: str, cfg: ZooConfig, tokenizer: Manifest, home: str) -> Manifest:
    h = SageHome(home)
    dcfg = DatasetConfig(task=task_name, n_train=cfg.prompts.n_train, n_test=cfg.prompts.n_test, seed=cfg.prompts.seed)
    key = stable_hash(dcfg, get_task(task_name), tokenizer["hash"])
    path = h.prompts_path(task_name, key)
    if not is_complete(path.parent):
        tok = zoo_store.load_tokenizer(tokenizer["path"])
        df = generate_prompts(get_task(task_name), dcfg, tok, max_len=cfg.model.n_ctx)
        write_prompts(h, task_name, key, df, meta={"config": dcfg.model_dump(), "tokenizer": tokenizer["hash"]})
    return {"task": task_name, "path": str(path), "hash": file_hash(path)}


@task(name="make-corpus", **TASK_DEFAULTS)
def make_corpus(cfg: ZooConfig, tokenizer: Manifest, home: str) -> Manifest:
    h = SageHome(home)
    key = stable_hash(cfg.corpus, cfg.tasks, cfg.prompts.seed, cfg.heldout_fraction, tokenizer["hash"])
    d = h.corpus_dir(key)
    if not is_complete(d):
        tok = zoo_store.load_tokenizer(tokenizer["path"])
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
    return {"path": str(path), "hash": file_hash(path)}


def _corpus_tokens(corpus: Manifest, split: str, pad_id: int) -> torch.Tensor:
    df = read_corpus(corpus["path"]).filter(pl.col("split") == split)
    return model_mod.pad_sequences(df["tokens"].to_list(), pad_id)


@task(name="train-model", **TASK_DEFAULTS)
def train_model(cfg: ZooConfig, tokenizer: Manifest, corpus: Manifest, home: str) -> Manifest:
    h = SageHome(home)
    path = h.model_dir(cfg.model.name)
    build_key = stable_hash(cfg.model, cfg.train, tokenizer["hash"], corpus["hash"])
    if zoo_store.model_is_complete(path):
        meta = zoo_store.read_train_meta(path)
        if meta.get("build_key") == build_key:
            return {"path": str(path), "hash": zoo_store.model_hash(path), "build_key": build_key}
        raise zoo_store.StoreError(
            f"{path} holds a model built from another config; choose another --model-name or delete that directory"
        )
    logger = get_run_logger()
    tok = zoo_store.load_tokenizer(tokenizer["path"])
    tokens = _corpus_tokens(corpus, "train", tok.pad_token_id)
    model = model_mod.build_model(cfg.model, len(tok))
    t0 = time.perf_counter()

    def log(step: int, loss: float) -> None:
        if step % 250 == 0 or step == cfg.train.steps - 1:
            logger.info(f"step {step}/{cfg.train.steps} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)")

    losses = model_mod.train_model(model, tokens, tok.pad_token_id, cfg.train, on_step=log)
    meta = {"build_key": build_key, "train_seconds": time.perf_counter() - t0, "final_loss": losses[-1],
            "first_loss": losses[0], "n_sequences": len(tokens), "config": cfg.model_dump(mode="json")}
    zoo_store.save_model(h, cfg.model.name, model, meta)
    return {"path": str(path), "hash": zoo_store.model_hash(path), "build_key": build_key}


@task(name="import-model", **{**TASK_DEFAULTS, "cache_key_fn": None, "persist_result": False})
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

        m = HookedTransformer.from_pretrained(pretrained, device="cpu")
        if m.tokenizer is None or m.tokenizer.bos_token_id is None:
            raise ValueError(f"{pretrained}: its tokenizer has no BOS token; SAGE prompts start with BOS")
        zoo_store.save_tokenizer(h.tokenizer_dir(zoo_name), m.tokenizer)
        zoo_store.save_model(h, zoo_name, m, {"pretrained": pretrained,
                                              "loader": "transformer_lens.HookedTransformer.from_pretrained"})
    return {"path": str(path), "hash": zoo_store.model_hash(path)}


@task(name="evaluate-model", **TASK_DEFAULTS)
def evaluate_model(model: Manifest, datasets: list[Manifest], home: str) -> Manifest:
    """Per task, on held-out test prompts: accuracy (answer outranks the competing answer) and mean logit diff."""
    m = zoo_store.load_model(model["path"])
    rows = []
    for ds in datasets:
        df = read_prompts(ds["path"]).filter((pl.col("split") == "test") & pl.col("pair_of").is_null())
        logits = model_mod.final_logits(m, df["tokens"].to_list(), m.tokenizer.pad_token_id)
        met = model_mod.answer_metrics(logits, torch.as_tensor(df["answer_token"].to_list()),
                                       torch.as_tensor(df["cf_answer_token"].to_list()))
        rows.append({"task": ds["task"], **met})
    table = pl.DataFrame(rows)
    name = Path(model["path"]).parent.name  # the zoo directory (an imported model's cfg.model_name may differ)
    path = zoo_store.write_table(SageHome(home).zoo_report(name) / "task_metrics.parquet", table)
    return {"path": str(path), "rows": rows}


@task(name="capture-sae-activations", **TASK_DEFAULTS)
def capture_sae_activations(cfg: ZooConfig, model: Manifest, corpus: Manifest, hooks: list[str], home: str) -> Manifest:
    """One forward pass over corpus tokens caches every hook the zoo trains on (train and held-out sets)."""
    h = SageHome(home)
    key = stable_hash(model["hash"], corpus["hash"], sorted(hooks), cfg.saes.n_tokens, cfg.saes.n_eval_tokens)
    path = h.sae_training_acts(cfg.model.name, key)
    if not is_complete(path):
        m = zoo_store.load_model(model["path"])
        pad = m.tokenizer.pad_token_id
        tensors = {}
        for split, n_tokens in (("train", cfg.saes.n_tokens), ("heldout", cfg.saes.n_eval_tokens)):
            acts = sae_zoo.capture_activations(m, _corpus_tokens(corpus, split, pad), pad, hooks, n_tokens)
            tensors.update({f"{split}.{hook}": a for hook, a in acts.items()})
        zoo_store.save_tensors(path, tensors, meta={"model": model["hash"], "corpus": corpus["hash"]})
    return {"path": str(path), "hash": key}


@task(name="train-sae", **TASK_DEFAULTS)
def train_sae(spec: sae_zoo.SAESpec, cfg: ZooConfig, model: Manifest, acts: Manifest, home: str) -> Manifest:
    h = SageHome(home)
    path = h.sae_dir(cfg.model.name, spec.name)
    if not (is_complete(path) and _sae_is_current(path, spec, model, acts)):
        acts_t = zoo_store.load_tensor(acts["path"], f"train.{spec.hook}")
        t0 = time.perf_counter()
        sae = sae_zoo.train_sae(spec, acts_t, model_name=cfg.model.name)
        zoo_store.save_sae(path, sae, meta={"spec": spec.model_dump(), "model": model["hash"], "acts": acts["hash"],
                                            "train_seconds": time.perf_counter() - t0}, replace=is_complete(path))
    return {"name": spec.name, "path": str(path), "hash": dir_hash(path)}


def _sae_is_current(path: Path, spec: sae_zoo.SAESpec, model: Manifest, acts: Manifest) -> bool:
    """An SAE on disk under this name was trained from this spec (training settings included), on this model and, where
    recorded, these activations; otherwise the zoo retrains it (an SAE name says only hook, architecture and width)."""
    meta = zoo_store.sae_meta(path)
    return (meta.get("spec") == spec.model_dump() and meta.get("model") == model["hash"]
            and meta.get("acts", acts["hash"]) == acts["hash"])


@task(name="evaluate-saes", **TASK_DEFAULTS)
def evaluate_saes(cfg: ZooConfig, model: Manifest, saes: list[Manifest], acts: Manifest, corpus: Manifest,
                  home: str) -> Manifest:
    """Explained variance, L0, dead share on held-out activations; CE loss recovered on held-out text."""
    m = zoo_store.load_model(model["path"])
    pad = m.tokenizer.pad_token_id
    tokens = _corpus_tokens(corpus, "heldout", pad)[: cfg.saes.n_ce_sequences]
    clean = sae_zoo.mean_ce(m, tokens, pad)
    zero: dict[str, float] = {}  # zero-ablation CE, once per hook
    rows = []
    for s in saes:
        sae = zoo_store.load_sae(s["path"])
        meta = zoo_store.sae_meta(s["path"])
        hook = sae.cfg.metadata.hook_name
        held = zoo_store.load_tensor(acts["path"], f"heldout.{hook}")
        if hook not in zero:
            zero[hook] = sae_zoo.mean_ce(m, tokens, pad, hook, torch.zeros_like)
        rows.append({
            "sae": s["name"], "hook": hook, "architecture": meta["spec"]["architecture"], "d_sae": sae.cfg.d_sae,
            **sae_zoo.reconstruction_metrics(sae, held),
            **sae_zoo.ce_loss_recovered(m, sae, tokens, pad, clean=clean, zero=zero[hook]),
            "train_seconds": meta.get("train_seconds"),
        })
    table = pl.DataFrame(rows)
    path = zoo_store.write_table(SageHome(home).zoo_report(cfg.model.name) / "sae_metrics.parquet", table)
    return {"path": str(path), "hash": file_hash(path)}
