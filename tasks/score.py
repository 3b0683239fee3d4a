"""Scoring tasks: resolve an SAE, the references a task's SAEs are judged against, and `score-sae`: everything scored
for one SAE (its scoring units on every task, then its core metrics), the unit of work that is dispatched.

A scoring *unit* is what one leaderboard row scores: one SAE at its own hook (native), a pair of residual SAEs of one
family around a sub-layer (projection / difference), or a control (oracle / random) at every cross-section. Each
unit's rows on one task (`score_part`) and each SAE's core metrics (`sae_core_metrics`) are cached on their own
content keys (`part_key`, `core_key`) inside the SAE's one task run.

Typed references in and out (`storage.refs`); the model, each SAE and each task's references are read from disk once
per process (`tasks.loaded`), and an SAE is checked against the model once, when it is resolved.

Devices: each compute task takes a device spec last; the model, the SAEs, the references and the activations meet on
that device (an SAE or references read once on the CPU, their device copies kept as "moved"), and only floats and CPU
tensors are written.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import torch
from prefect import task

from sage_core.ground_truth.sections import CrossSection, PrefixCache, build_sets, section_slice, split_rows
from sage_core.model.devices import one_device
from sage_core.model.transformer import pad_sequences
from sage_core.prompts.library import get_task
from sage_core.scoring import mapping as mp
from sage_core.scoring.core import core_metrics, core_reference
from sage_core.scoring.score import (
    ScoreConfig,
    SectionReference,
    background_means,
    best_method,
    oracle_codes,
    random_codes,
    reference,
    score_section,
)
from sage_core.zoo.sae import LoadedSAE, check_sae
from storage import ground_truth as gt_store
from storage import scores as sc_store
from storage.activations import ActivationStore
from storage.atomic import StoreError
from storage.datasets import read_corpus, read_prompts
from storage.home import SageHome
from storage.records import dir_ref
from storage.refs import (
    CoreRef,
    CorpusRef,
    DatasetRef,
    GroundTruthPartRef,
    ModelRef,
    ReferencesRef,
    SAERef,
    ScorePartRef,
    StoreRef,
)
from storage.sae_sources import load_sae_spec, sae_dir_of
from tasks import loaded, progress, remote
from tasks.common import UNCACHED, is_transient, needs_build, one_line, output_key, stage_options, task_key
from tasks.units import JobOutcome, SAEOutcome, SAEWork, ScoringUnit, TaskInputs, UnitJob  # noqa: F401  (re-exported)


# -- task run names (the Prefect UI lists task runs by these) ------------------------------------------------------
def _references_name(parameters: dict) -> str:
    return f"references {parameters['dataset'].task}"


# -- resolving SAEs ------------------------------------------------------------------------------------------------
@task(name="resolve-sae", task_run_name="resolve {spec}", **{**UNCACHED, "retries": 0})
def resolve_sae(spec: str, model: ModelRef, model_name: str, home: str, worker: str | None = None) -> SAERef:
    """Load and check one SAE against the model before any compute; raises a one-line error if it cannot be scored.

    Never cached: a spec names files (or code) that can change; the content hash it returns keys everything after.
    This load is the run's only one: the loaded SAE is kept for the tasks that score it (`tasks.loaded`), on `worker`
    (`tasks.remote`), where they go too."""
    return remote.compute(_resolve, spec, model, model_name, home, worker=worker)


def _resolve(spec: str, model: ModelRef, model_name: str, home: str) -> SAERef:
    h = SageHome(home)
    sae = load_sae_spec(spec, h, model_name)
    check_sae(sae, loaded.shared_model(h, model))
    where = sae_dir_of(spec, h, model_name)
    ref = SAERef(spec=spec, name=sae.name, hook=sae.hook, hash=sae.content_hash, arch=sae.arch, d_sae=sae.d_sae,
                 d_in=sae.d_in, source=sae.source, path=h.relative(where) if where is not None else "")
    loaded.keep("sae", (ref.hash, ref.spec), sae)  # this read is the run's one read of the SAE: the scorers reuse it
    return ref


def loaded_sae(h: SageHome, ref: SAERef, model_name: str, device: str = "cpu") -> LoadedSAE:
    """The SAE `ref` names, read once per process; a spec whose weights no longer hash to `ref.hash` is refused (its
    files were swapped since it was resolved) and nothing is kept. On `device` (a torch device name, `one_device`'s):
    the CPU instance read from disk, or its copy there, made once per process and device."""

    def load() -> LoadedSAE:
        sae = load_sae_spec(ref.spec, h, model_name)
        if sae.content_hash != ref.hash:
            raise ValueError(f"SAE {ref.spec} changed since it was resolved (weights hash {sae.content_hash}, "
                             f"expected {ref.hash}); rerun the evaluation")
        return sae

    sae = loaded.once("sae", (ref.hash, ref.spec), load)
    if device == "cpu":
        return sae
    return loaded.once("moved", ("sae", ref.hash, ref.spec, device), lambda: sae.to(device))


def loaded_references(h: SageHome, ref: ReferencesRef, device: str = "cpu") -> list[SectionReference]:
    """A task's section references, read once per process, on `device` (a torch device name), like `loaded_sae`."""
    refs = loaded.once("references", (ref.hash,), lambda: sc_store.load_references(h.at(ref)))
    if device == "cpu":
        return refs
    return loaded.once("moved", ("references", ref.hash, device), lambda: [r.to(device) for r in refs])


# -- references ----------------------------------------------------------------------------------------------------
def _heldout(h: SageHome, corpus: CorpusRef, n: int) -> list[list[int]]:
    return read_corpus(h.at(corpus)).filter(pl.col("split") == "heldout")["tokens"].to_list()[:n]


@task(name="section-references", task_run_name=_references_name, **stage_options())
def section_references(model: ModelRef, dataset: DatasetRef, store: StoreRef, parts: list[GroundTruthPartRef],
                       max_test: int, corpus: CorpusRef, n_background: int, home: str,
                       device: str = "cpu") -> ReferencesRef:
    """Per cross-section of one task: its ground-truth dictionary, what editing and patching it does, and the mean
    activation there over `n_background` held-out background sequences (the random control's bias)."""
    key = task_key(section_references, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    d = h.section_reference(key)
    if needs_build(d):
        dev = one_device(device)
        attributes = get_task(dataset.task).attribute_names()
        df = read_prompts(h.at(dataset))
        s = ActivationStore.open(h.at(store), expect={"dataset_hash": dataset.hash})
        rows = split_rows(df, attributes, "test", max_test)
        pair_labels = {p.attribute: {a: df[f"attr_{a}"].gather(p.x).to_list() for a in attributes}
                       for p in rows.pairs}
        refs, gt_paths = [], {}
        with loaded.model(h, model, dev) as m:
            pad = m.tokenizer.pad_token_id
            bg = background_means(m, _heldout(h, corpus, n_background), pad, [p.section for p in parts])
            for part in parts:
                section, part_dir = part.section, h.at(part)
                dic = gt_store.load_dictionary(gt_store.dictionary_path(
                    part_dir, best_method(gt_store.read_quality(part_dir)))).to(dev)
                _, _, clean, pairs = build_sets(df, s.read(section.hook), section, attributes, "test", max_test, device=dev)
                # written from the CPU: the same files whatever the device
                refs.append(reference(m, section, dic, clean, pairs, pair_labels, pad, bg[section.label]).to("cpu"))
                gt_paths[section.label] = str(part_dir)
        sc_store.write_references(d, refs, gt_paths, {"task": dataset.task, "model": model.hash})
    return dir_ref(h, ReferencesRef, d, task=dataset.task)


# -- scoring -------------------------------------------------------------------------------------------------------
def _codes_at(sae: LoadedSAE, acts: np.ndarray, role: int, device: torch.device) -> torch.Tensor:
    """Codes on `device` (an SAE that could not move there encodes where it is and hands them back there)."""
    x = torch.tensor(acts[:, role], dtype=torch.float32, device=device)
    return sae.encode(x.reshape(len(x), -1))


def unit_codes(unit: ScoringUnit, section: CrossSection, role: int, store: ActivationStore, saes: list[LoadedSAE],
               decoders: dict, model, ref: SectionReference, labels: dict[str, list[str]], section_acts: torch.Tensor,
               cfg: ScoreConfig) -> mp.SectionCodes:
    """The unit's codes at `section` for every row of the prompt table (`model`: read for its weights only)."""
    if unit.kind == "oracle":
        return oracle_codes(ref.dictionary, labels)
    if unit.kind == "random":
        return random_codes(section_acts, ref.background_mean, cfg)
    if unit.mapping == "native":
        sae = saes[0]
        codes = _codes_at(sae, store.read(sae.hook), role, section_acts.device)
        dec, bias = decoders[sae.name]
        return mp.native(codes, dec, bias, section, d_head=model.cfg.d_head)
    before, after = saes
    q = mp.write_map(model, section, unit.mapping)
    parts = []
    for sae in (after, before):
        dec, bias = decoders[sae.name]
        parts.append((_codes_at(sae, store.read(sae.hook), role, section_acts.device), dec, bias))
    return mp.projected(parts[0], parts[1], q)


def part_key(unit: ScoringUnit, model: ModelRef, inputs: TaskInputs, model_name: str, cfg: ScoreConfig) -> str:
    """The key of one unit's rows on one task: its inputs' content and this module's code (a scoring change is never
    answered from an older scoring's files); never the device or the SAE unit it was dispatched in."""
    return output_key("score-unit", dict(unit=unit, model=model, dataset=inputs.dataset, store=inputs.store,
                                         refs=inputs.refs, model_name=model_name, cfg=cfg), (__name__,))


def core_key(sae: SAERef, model: ModelRef, corpus: CorpusRef, n_sequences: int, model_name: str) -> str:
    return output_key("core-metrics", dict(sae=sae, model=model, corpus=corpus, n_sequences=n_sequences,
                                           model_name=model_name), (__name__,))


def score_part(h: SageHome, unit: ScoringUnit, model: ModelRef, inputs: TaskInputs, model_name: str,
               cfg: ScoreConfig, device: str = "cpu") -> tuple[ScorePartRef, bool]:
    """Every metric of one unit at every cross-section of one task it reaches -> scores/parts/<key>/ (reused when
    whole); and whether it was computed now."""
    dataset, store, refs = inputs.dataset, inputs.store, inputs.refs
    d = h.score_part(part_key(unit, model, inputs, model_name, cfg))
    fresh = needs_build(d)
    if fresh:
        dev = one_device(device)
        attributes = get_task(refs.task).attribute_names()
        df = read_prompts(h.at(dataset))
        # opened verified (every chunk's size and checksum): a damaged store fails here, never scores silently
        s = ActivationStore.open(h.at(store), expect={"dataset_hash": dataset.hash})
        rows = split_rows(df, attributes, "test", cfg.max_test)
        labels = {a: df[f"attr_{a}"].to_list() for a in attributes}
        saes = [loaded_sae(h, r, model_name, dev) for r in unit.saes]  # checked against the model when resolved
        # on the unit's device even for an SAE that could not move there
        decoders = {sae.name: tuple(t.to(dev) for t in mp.affine_decoder(sae)) for sae in saes}
        weights = loaded.shared_model(h, model, dev)
        out = []
        # every SAE scored at a cross-section patches the same prompts: their blocks before it run once per process
        prefixes = loaded.once("prefixes", (model.hash, str(dev)), PrefixCache)
        with loaded.model(h, model, dev) as m:
            pad = m.tokenizer.pad_token_id
            for ref in loaded_references(h, refs, dev):
                section = ref.section
                if not unit.reaches(section):
                    continue
                role = rows.roles.index(section.role)
                hook_acts = s.read(section.hook)  # read once: the section's slice and its test sets both come from it
                sec_acts = torch.tensor(section_slice(hook_acts, role, section.head), device=dev)
                _, _, clean, pairs = build_sets(df, hook_acts, section, attributes, "test", cfg.max_test, device=dev)
                codes = unit_codes(unit, section, role, s, saes, decoders, weights, ref, labels, sec_acts, cfg)
                sc_pairs = {p.attribute: (codes.rows(p.x), codes.rows(p.xp)) for p in rows.pairs}
                metrics = score_section(m, ref, clean, pairs, codes.rows(rows.clean), sc_pairs, pad, cfg, prefixes)
                base = {"sae": unit.name, "task": refs.task, "hook": section.hook, "head": section.head,
                        "role": section.role, "mapping": unit.mapping}
                out += [{**base, "metric": k, "value": float(v)} for k, v in metrics.items()]
        sc_store.write_part(d, out, {"unit": unit.name, "task": refs.task})
    return dir_ref(h, ScorePartRef, d, sae=unit.name, task=refs.task), fresh


def sae_core_metrics(h: SageHome, sae: SAERef, model: ModelRef, corpus: CorpusRef, n_sequences: int,
                     model_name: str, device: str = "cpu") -> CoreRef:
    """One SAE spliced into the model on held-out background text: CE loss recovered, KL, EV, L0, dead share (reused
    when whole)."""
    d = h.core_metrics(core_key(sae, model, corpus, n_sequences, model_name))
    if needs_build(d):
        dev = one_device(device)
        s = loaded_sae(h, sae, model_name, dev)
        with loaded.model(h, model, dev) as m:
            pad = m.tokenizer.pad_token_id
            tokens = pad_sequences(_heldout(h, corpus, n_sequences), pad)
            # the clean and zero-ablated passes do not depend on the SAE: once per model, hook, text and device in a
            # process (kept within a byte budget; the zero-ablation CE, one number, even when the rest is not)
            key = (model.hash, s.hook, corpus.hash, n_sequences, str(dev))

            def reference():
                ref = core_reference(m, s.hook, tokens, pad, ce_zero=loaded.peek("zero-ce", key))
                loaded.keep("zero-ce", key, ref.ce_zero)
                return ref

            metrics = core_metrics(m, s.hook, s.encode, s.decode, s.d_sae, tokens, pad,
                                   reference=loaded.once("core-reference", key, reference))
        sc_store.write_core(d, metrics, {"sae": sae.name, "hash": sae.hash})
    sc_store.read_core(d)  # checked here, where a damaged file costs only this SAE; the report reads it again
    return dir_ref(h, CoreRef, d, sae=sae.name)


# -- the dispatched unit: one SAE ----------------------------------------------------------------------------------
def _work_name(parameters: dict) -> str:
    return f"score {parameters['work'].label}"


def _failure(job: UnitJob, exc: BaseException) -> JobOutcome:
    return JobOutcome(job=job, error=one_line(exc), input_fault=isinstance(exc, StoreError))


@task(name="score-sae", task_run_name=_work_name, **UNCACHED)
def score_sae(work: SAEWork, model: ModelRef, inputs: dict[str, TaskInputs], model_name: str, cfg: ScoreConfig,
              corpus: CorpusRef, n_sequences: int, home: str, worker: str | None = None,
              device: str = "cpu") -> SAEOutcome:
    """Everything scored for one SAE, on one device: its units on every task (native, and the projected pairs it
    closes), then its core metrics; or the controls on every task. Each result is cached on its own content key
    (`part_key`, `core_key`), so a rerun or a partly failed run reuses what is whole and a new SAE computes only its
    own. A unit that fails is reported and the others go on; an I/O hiccup is raised, so Prefect retries the SAE
    (what it finished is reused). The work runs on `worker` (`tasks.remote`), where the SAE was resolved."""
    return remote.compute(_score_work, work, model, inputs, model_name, cfg, corpus, n_sequences, home, device,
                          worker=worker)


def _score_work(work: SAEWork, model: ModelRef, inputs: dict[str, TaskInputs], model_name: str, cfg: ScoreConfig,
                corpus: CorpusRef, n_sequences: int, home: str, device: str) -> SAEOutcome:
    h = SageHome(home)
    parts, timing = [], {"score": 0.0, "core": 0.0}
    built = 0
    for job in work.jobs:
        t0 = time.perf_counter()
        try:
            part, fresh = score_part(h, job.unit, model, inputs[job.task], model_name, cfg, device)
            parts.append(JobOutcome(job=job, part=part))
            built += fresh
        except Exception as exc:  # noqa: BLE001 (reported per unit; transient I/O goes to Prefect's retry)
            if is_transient(exc):
                raise
            parts.append(_failure(job, exc))
        timing["score"] += time.perf_counter() - t0
        progress.advance("score")
    core, core_error = None, None
    if work.sae is not None:
        t0 = time.perf_counter()
        try:
            core = sae_core_metrics(h, work.sae, model, corpus, n_sequences, model_name, device)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise
            core_error = one_line(exc)
        timing["core"] = time.perf_counter() - t0
        progress.advance("core")
    return SAEOutcome(name=work.name, parts=tuple(parts), core=core, core_error=core_error, seconds=timing,
                      built=built)
