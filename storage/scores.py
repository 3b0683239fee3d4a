"""Scoring outputs, all write-once directories under scores/:

    references/<key>/   per task: what each cross-section's SAEs are judged against (refs.safetensors + refs.json)
    core/<key>/         one SAE's core metrics on background text (core.json)
    parts/<key>/        one scoring unit on one task (scores.parquet, long form)
    <run>/              scores.parquet, leaderboard.parquet, failures.parquet of one evaluation
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import polars as pl
from safetensors.torch import save_file

from sage_core.ground_truth.cross_section import CrossSection
from sage_core.scoring.rows import score_frame
from sage_core.scoring.score import SectionReference
from storage import ground_truth as gt_store
from storage.atomic import MARKER, StoreError, cached_marker, is_complete, read_marker, write_once
from storage.hashing import stable_hash
from storage.integrity import load_safetensors, read_json, read_parquet
from storage.tables import write_parquet


def write_references(d: Path, refs: list[SectionReference], gt_paths: dict[str, str], meta: dict[str, Any]) -> Path:
    """Tensors (patch argmax, supervised shares, background means) as safetensors, scalars and the dictionary's
    origin as JSON; the dictionary itself stays where the ground-truth stage wrote it (`gt_paths[label]`)."""
    if not is_complete(d):
        with write_once(d, meta) as tmp:
            tensors, info = {}, []
            for r in refs:
                label = r.section.label
                for attr, t in r.patched_argmax.items():
                    tensors[f"{label}|patched|{attr}"] = t.contiguous()
                for attr, t in r.supervised_share.items():
                    tensors[f"{label}|share|{attr}"] = t.contiguous()
                tensors[f"{label}|bgmean"] = r.background_mean.contiguous()
                # relative to this directory, so a data root that is copied or moved still finds its own dictionary
                info.append({"section": r.section.model_dump(), "method": r.dictionary.method, "ld_clean": r.ld_clean,
                             "ld_meanabl": r.ld_meanabl, "floor": r.floor,
                             "ground_truth": os.path.relpath(gt_paths[label], d)})
            save_file(tensors, str(tmp / "refs.safetensors"))
            (tmp / "refs.json").write_text(json.dumps(info, indent=1))
    return d


def load_references(d: Path) -> list[SectionReference]:
    d = Path(d)
    if not is_complete(d):
        raise StoreError(f"no complete section references at {d}; rerun the evaluation")
    tensors, _ = load_safetensors(d / "refs.safetensors", d)
    out = []
    for item in read_json(d / "refs.json", d):
        section = CrossSection(**item["section"])
        label = section.label
        gt_dir = d / item["ground_truth"]  # relative to `d` (an absolute path stays absolute)
        dic = gt_store.load_dictionary(gt_store.dictionary_path(gt_dir, item["method"]))
        pick = {kind: {k.split("|")[2]: v for k, v in tensors.items() if k.startswith(f"{label}|{kind}|")}
                for kind in ("patched", "share")}
        out.append(SectionReference(section=section, dictionary=dic, ld_clean=item["ld_clean"],
                                    ld_meanabl=item["ld_meanabl"], patched_argmax=pick["patched"],
                                    floor=item["floor"], supervised_share=pick["share"],
                                    background_mean=tensors[f"{label}|bgmean"]))
    return out


def write_core(d: Path, metrics: dict[str, float], meta: dict[str, Any]) -> Path:
    if not is_complete(d):
        with write_once(d, meta) as tmp:
            (tmp / "core.json").write_text(json.dumps(metrics, indent=1))
    return d


def read_core(d: Path) -> dict[str, float]:
    return read_json(Path(d) / "core.json", Path(d))


def write_part(d: Path, rows: list[dict], meta: dict[str, Any]) -> Path:
    if not is_complete(d):
        with write_once(d, meta) as tmp:
            write_parquet(score_frame(rows), tmp / "scores.parquet")
    return d


def read_part(d: Path) -> pl.DataFrame:
    return read_parquet(Path(d) / "scores.parquet", Path(d))


def frames_digest(*frames: pl.DataFrame | None) -> str:
    """Content hash of result tables (schema and every value, in order): equal tables, equal digest."""
    return stable_hash([None if f is None else [str(f.schema), f.to_dict(as_series=False)] for f in frames])


def same_run(old: dict[str, Any], identity: dict[str, str]) -> bool:
    return (old.get("run_key") == identity["run_key"] if old.get("run_key") and identity.get("run_key")
            else old.get("content") == identity["content"])


def refuse_other_run(d: Path, identity: dict[str, str]) -> bool:
    """True when `d` is already complete with this `identity` (an identical rerun: reuse it), False when it is to be
    written: absent, or this run's own directory left damaged or incomplete (its marker names this run: the write
    replaces it, so a rerun rebuilds what `sage leaderboard` or `sage report` found damaged). A directory whose marker
    cannot be read (so whose it is cannot be told) is moved aside to `<name>.damaged-<time>`, never deleted, and
    written anew. A StoreError naming another --run when it holds another evaluation, whole or damaged, which is never
    kept silently while this run's results are published, nor overwritten."""
    d = Path(d)
    if not d.exists() and not d.is_symlink():
        return False
    old = cached_marker(d) if d.is_dir() and not d.is_symlink() else None
    if old is None:
        if not d.is_dir() or d.is_symlink() or _holds_results(d):  # not a run's: never moved, never written over
            raise StoreError(f"{d} exists but is not a whole evaluation (damaged or foreign); pass another --run "
                             f"(e.g. --run {d.name}-2), or move that directory away to replace it")
        _move_aside(d)
        return False
    whole = is_complete(d)
    if not same_run(old, identity):
        state = "already holds" if whole else "holds a damaged copy of"
        raise StoreError(f"{d.parent.name}/{d.name} ({d}) {state} another evaluation; pass another --run (e.g. "
                         f"--run {d.name}-2), or delete that directory to replace it")
    return whole


def rebuild_hint(exc: StoreError, run: str) -> StoreError:
    """A damaged run's or report's error for a command that only reads it (`sage leaderboard`, `sage report`):
    rerunning that command rebuilds nothing, rerunning the evaluation does (`refuse_other_run`)."""
    what = str(exc).split("; rerun the command")[0]
    return StoreError(f"{what}; rerun the `sage evaluate` (or watch run) that wrote run {run}, with the same options: "
                      "it rebuilds it")


def _holds_results(d: Path) -> bool:
    """Some directory below `d` is a complete SAGE output (a zoo, a model): `d` is no run directory."""
    return any(n in names for root, _, names in os.walk(d) if Path(root) != d
               for n in (MARKER, "_MODEL_COMPLETE.json"))


def _move_aside(d: Path) -> Path:
    """`d` (no readable marker: damaged, or not SAGE's) renamed to a sibling `<name>.damaged-<UTC time>`; a StoreError
    in one line when even that fails."""
    aside = d.with_name(f"{d.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}")
    try:
        os.replace(d, aside)
    except OSError as exc:
        raise StoreError(f"{d} exists but is not a whole evaluation (no readable marker) and could not be moved aside "
                         f"({exc.strerror or exc}); move or delete it, then rerun") from exc
    logging.getLogger("sage").warning(f"{d} was not a whole evaluation (no readable marker): moved aside to "
                                      f"{aside.name}, and written anew")
    return aside


RUN_FILES = {"scores": "scores.parquet", "leaderboard": "leaderboard.parquet", "failures": "failures.parquet"}
MARKER_FIELDS = frozenset({"files", "digest_algorithm", "kind", "written_at", "content"})  # the marker's own


def run_files(d: Path) -> dict[str, Path]:
    """The files of scores/<run>/ by what they hold (scores, leaderboard, failures)."""
    return {what: Path(d) / name for what, name in RUN_FILES.items()}


def write_run(d: Path, scores: pl.DataFrame, board: pl.DataFrame, failures: pl.DataFrame,
              meta: dict[str, Any]) -> Path:
    """scores/<run>/ once. `meta["run_key"]` (what was scored, from the flow) identifies the run, else the tables'
    content does: the same run again is reused, another one under the same name is refused (`refuse_other_run`)."""
    identity = {"run_key": meta.get("run_key"), "content": frames_digest(scores, board, failures)}
    if not refuse_other_run(d, identity):
        with write_once(d, {**meta, **identity}) as tmp:
            for df, name in zip((scores, board, failures), RUN_FILES.values(), strict=True):
                write_parquet(df, tmp / name)
    return d


def read_run_table(d: Path, what: str) -> pl.DataFrame:
    """One table of scores/<run>/ (`what`: a key of RUN_FILES), checked against the run's marker. A run whose marker
    is there but a file is damaged names that file and the evaluation whose rerun rebuilds it."""
    d = Path(d)
    if not (d / MARKER).is_file():
        raise StoreError(f"no complete run at {d}; run `sage evaluate` first")
    try:
        return read_parquet(d / RUN_FILES[what], d)
    except StoreError as exc:
        raise rebuild_hint(exc, d.name) from exc


def read_run(d: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(scores, leaderboard, failures) of a complete scores/<run>/."""
    return tuple(read_run_table(d, what) for what in RUN_FILES)


def read_run_meta(d: Path) -> dict[str, Any]:
    """What `write_run` was told about a complete scores/<run>/ (run, run_key, model, tasks, created, ...)."""
    if not is_complete(d):
        raise StoreError(f"no complete run at {d}; run `sage evaluate` first")
    return {k: v for k, v in read_marker(d).items() if k not in MARKER_FIELDS}
