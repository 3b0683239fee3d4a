"""Scoring tasks: resolve an SAE, judge it at every cross-section it reaches, its core metrics, combine a run.

A scoring *unit* is what one leaderboard row scores: one SAE at its own hook (native), a pair of residual SAEs of one
family around a sub-layer (projection / difference), or a control (oracle / random) at every cross-section.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import polars as pl
import torch
from prefect import task
from pydantic import BaseModel, ConfigDict

from sage_core.ground_truth.sections import CrossSection, build_sets, section_slice, split_rows
from sage_core.scoring import mapping as mp
from sage_core.scoring.core import core_metrics
from sage_core.scoring.rows import Kind, MappingName, sufficiency_closeness
from sage_core.scoring.score import (
    ScoreConfig,
    SectionReference,
    background_means,
    oracle_codes,
    random_codes,
    reference,
    score_section,
)
from sage_core.zoo.sae import LoadedSAE, check_sae
from storage import ground_truth as gt_store
from storage import scores as sc_store
from storage.activations import ActivationStore
from storage.datasets import read_corpus, read_prompts
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.sae_sources import load_sae_spec
from storage.zoo import load_model
from tasks.common import UNCACHED, needs_build, stage_options, task_key

Manifest = dict[str, Any]


class ScoringUnit(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    kind: Kind
    mapping: MappingName
    saes: tuple[Manifest, ...] = ()  # resolved SAE manifests: (sae,) native, (before, after) projected, () control
    bracket: tuple[str, str] | None = None

    def reaches(self, section: CrossSection) -> bool:
        if self.kind != "trained":
            return True
        if self.mapping == "native":
            return mp.canonical_hook(section.hook) == mp.canonical_hook(self.saes[0]["hook"])
        if not mp.is_sublayer(section.hook) or mp.bracket(section.hook) != self.bracket:
            return False
        return self.mapping == "projection" or section.head is None


def sae_family(m: Manifest) -> str:
    """SAEs of one family share everything but their hook: the zoo's `<hook>--<arch>-<width>`, a registry release,
    or architecture-width."""
    if "--" in m["name"]:
        return m["name"].split("--", 1)[1]
    if m["source"] == "registry":
        return m["spec"].replace(":", "/").split("/", 1)[0]
    return f"{m['arch']}-{m['d_sae']}"


# -- resolving SAEs ------------------------------------------------------------------------------------------------
@task(name="resolve-sae", **{**UNCACHED, "retries": 0})
def resolve_sae(spec: str, model: Manifest, model_name: str, home: str) -> Manifest:
    """Load and check one SAE against the model before any compute; raises a one-line error if it cannot be scored.

    Never cached: a spec names files (or code) that can change; the content hash it returns keys everything after."""
    h = SageHome(home)
    loaded = load_sae_spec(spec, h, model_name)
    check_sae(loaded, _model_for_checks(str(h.at(model["path"])), model["hash"]))
    return {"spec": spec, "name": loaded.name, "hook": loaded.hook, "hash": loaded.content_hash,
            "arch": loaded.arch, "d_sae": loaded.d_sae, "d_in": loaded.d_in, "source": loaded.source}


@task(name="identity-brackets", **UNCACHED)
def identity_brackets(model: Manifest, brackets: list[list[str]], home: str) -> list[list[str]]:
    """The (before, after) residual brackets whose projector P_c is the identity: there `projection` equals
    `difference`, so the pair is scored once, as projection (which also reaches head cross-sections)."""
    m = _model_for_checks(str(SageHome(home).at(model["path"])), model["hash"])
    return [list(b) for b in brackets if mp.projection_is_difference(m, *b)]


@functools.lru_cache(maxsize=2)
def _model_for_checks(path: str, content_hash: str):
    """One model per process for `check_sae`, which only reads its hooks and config (no forward pass, so threads can
    share it); keyed on the content hash, so a rebuilt model is reloaded."""
    return load_model(path)


def _load(m: Manifest, home: str, model_name: str) -> LoadedSAE:
    return load_sae_spec(m["spec"], SageHome(home), model_name)


# -- references ----------------------------------------------------------------------------------------------------
def _best_method(quality: pl.DataFrame) -> str:
    """The dictionary method an SAE is judged against: the one whose ground truth is truest at that cross-section
    (mean of 1 - |1 - sufficiency|, necessity and edit accuracy, over its attributes)."""
    q = quality.with_columns(
        sufficiency_closeness().clip(0, 1).alias("_s"), pl.col("necessity").clip(0, 1).alias("_n"),
        pl.col("edit_accuracy").fill_nan(None).alias("_e"))
    per = q.group_by("method").agg(pl.mean_horizontal(pl.col("_s").mean(), pl.col("_n").mean(),
                                                      pl.col("_e").mean()).alias("score"))
    return per.sort("score", descending=True, nulls_last=True)["method"][0]


@task(name="section-references", **stage_options())
def section_references(model: Manifest, dataset: Manifest, store: Manifest, gt_parts: list[Manifest], task_name: str,
                       attributes: list[str], max_test: int, corpus: Manifest, n_background: int,
                       home: str) -> Manifest:
    """Per cross-section of one task: its ground-truth dictionary, what editing and patching it does, and the mean
    activation there over `n_background` held-out background sequences (the random control's bias)."""
    key = task_key(section_references, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.section_reference(key)
    if needs_build(d):
        m = load_model(h.at(model["path"]))
        df = read_prompts(h.at(dataset["path"]))
        s = ActivationStore.open(h.at(store["path"]), expect={"dataset_hash": dataset["hash"]})
        pad = m.tokenizer.pad_token_id
        rows = split_rows(df, attributes, "test", max_test)
        held = read_corpus(h.at(corpus["path"])).filter(pl.col("split") == "heldout")["tokens"].to_list()[:n_background]
        bg = background_means(m, held, pad, [CrossSection(**p["section_obj"]) for p in gt_parts])
        refs, gt_paths = [], {}
        for part in gt_parts:
            section = CrossSection(**part["section_obj"])
            part_dir = h.at(part["path"])
            quality = gt_store.read_quality(part_dir)
            dic = gt_store.load_dictionary(gt_store.dictionary_path(part_dir, _best_method(quality)))
            _, _, clean, pairs = build_sets(df, s.read(section.hook), section, attributes, "test", max_test)
            pair_labels = {p.attribute: {a: df[f"attr_{a}"].gather(p.x).to_list() for a in attributes}
                           for p in rows.pairs}
            refs.append(reference(m, section, dic, clean, pairs, pair_labels, pad, bg[section.label]))
            gt_paths[section.label] = str(part_dir)
        sc_store.write_references(d, refs, gt_paths, {"task": task_name, "model": model["hash"]})
    return {"path": h.relative(d), "hash": dir_hash(d), "task": task_name}


# -- scoring -------------------------------------------------------------------------------------------------------
def _codes_at(sae: LoadedSAE, acts: np.ndarray, role: int) -> torch.Tensor:
    x = torch.tensor(acts[:, role], dtype=torch.float32)
    return sae.encode(x.reshape(len(x), -1))


def unit_codes(unit: ScoringUnit, section: CrossSection, role: int, store: ActivationStore, saes: list[LoadedSAE],
               decoders: dict, model, ref: SectionReference, labels: dict[str, list[str]], section_acts: torch.Tensor,
               cfg: ScoreConfig) -> mp.SectionCodes:
    """The unit's codes at `section` for every row of the prompt table."""
    if unit.kind == "oracle":
        return oracle_codes(ref.dictionary, labels)
    if unit.kind == "random":
        return random_codes(section_acts, ref.background_mean, cfg)
    if unit.mapping == "native":
        sae = saes[0]
        codes = _codes_at(sae, store.read(sae.hook), role)
        dec, bias = decoders[sae.name]
        return mp.native(codes, dec, bias, section, d_head=model.cfg.d_head)
    before, after = saes
    q = mp.write_map(model, section, unit.mapping)
    parts = []
    for sae in (after, before):
        dec, bias = decoders[sae.name]
        parts.append((_codes_at(sae, store.read(sae.hook), role), dec, bias))
    return mp.projected(parts[0], parts[1], q)


@task(name="score-unit", **stage_options())
def score_unit(unit: ScoringUnit, model: Manifest, dataset: Manifest, store: Manifest, refs: Manifest,
               task_name: str, attributes: list[str], model_name: str, cfg: ScoreConfig, home: str) -> Manifest:
    """Every metric of one unit at every cross-section of one task it reaches -> scores/parts/<key>/."""
    # the code version is part of the key: a scoring change must never be answered from an older scoring's files
    key = task_key(score_unit, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.score_part(key)
    if needs_build(d):
        m = load_model(h.at(model["path"]))
        pad = m.tokenizer.pad_token_id
        df = read_prompts(h.at(dataset["path"]))
        # opened verified (every chunk's size and checksum): a damaged store fails here, never scores silently
        s = ActivationStore.open(h.at(store["path"]), expect={"dataset_hash": dataset["hash"]})
        references: list[SectionReference] = sc_store.load_references(h.at(refs["path"]))
        rows = split_rows(df, attributes, "test", cfg.max_test)
        labels = {a: df[f"attr_{a}"].to_list() for a in attributes}
        saes = [_load(sm, home, model_name) for sm in unit.saes]
        for sae in saes:
            check_sae(sae, m)
        decoders = {sae.name: mp.affine_decoder(sae) for sae in saes}
        out = []
        for ref in references:
            section = ref.section
            if not unit.reaches(section):
                continue
            role = rows.roles.index(section.role)
            hook_acts = s.read(section.hook)  # read once: the section's slice and its test sets both come from it
            sec_acts = torch.tensor(section_slice(hook_acts, role, section.head))
            _, _, clean, pairs = build_sets(df, hook_acts, section, attributes, "test", cfg.max_test)
            codes = unit_codes(unit, section, role, s, saes, decoders, m, ref, labels, sec_acts, cfg)
            sc_pairs = {p.attribute: (codes.rows(p.x), codes.rows(p.xp)) for p in rows.pairs}
            metrics = score_section(m, ref, clean, pairs, codes.rows(rows.clean), sc_pairs, pad, cfg)
            base = {"sae": unit.name, "task": task_name, "hook": section.hook, "head": section.head,
                    "role": section.role, "mapping": unit.mapping}
            out += [{**base, "metric": k, "value": float(v)} for k, v in metrics.items()]
        sc_store.write_part(d, out, {"unit": unit.name, "task": task_name})
    return {"path": h.relative(d), "hash": dir_hash(d), "sae": unit.name, "task": task_name}


@task(name="core-metrics", **stage_options())
def sae_core_metrics(sae_m: Manifest, model: Manifest, corpus: Manifest, n_sequences: int, model_name: str,
                     home: str) -> Manifest:
    """One SAE spliced into the model on held-out background text: CE loss recovered, KL, EV, L0, dead share."""
    key = task_key(sae_core_metrics, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.core_metrics(key)
    if needs_build(d):
        from sage_core.model.transformer import pad_sequences

        m = load_model(h.at(model["path"]))
        pad = m.tokenizer.pad_token_id
        sae = _load(sae_m, home, model_name)
        check_sae(sae, m)
        held = read_corpus(h.at(corpus["path"])).filter(pl.col("split") == "heldout")["tokens"].to_list()[:n_sequences]
        metrics = core_metrics(m, sae.hook, sae.encode, sae.decode, sae.d_sae, pad_sequences(held, pad), pad)
        sc_store.write_core(d, metrics, {"sae": sae_m["name"], "hash": sae_m["hash"]})
    return {"sae": sae_m["name"], "path": h.relative(d), **sc_store.read_core(d)}
