"""Scoring outputs, all write-once directories under scores/:

    references/<key>/   per task: what each cross-section's SAEs are judged against (refs.safetensors + refs.json)
    core/<key>/         one SAE's core metrics on background text (core.json)
    parts/<key>/        one scoring unit on one task (scores.parquet, long form)
    <run>/              scores.parquet, leaderboard.parquet, failures.parquet of one evaluation
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from safetensors.torch import load_file, save_file

from sage_core.ground_truth import CrossSection
from sage_core.results import score_frame
from sage_core.scoring import SectionReference
from storage import ground_truth as gt_store
from storage.atomic import StoreError, is_complete, write_once


def write_references(d: Path, refs: list[SectionReference], gt_paths: dict[str, str], meta: dict[str, Any]) -> Path:
    """Tensors (patch argmax, supervised shares, background means) as safetensors, scalars and the dictionary's origin as JSON; the
    dictionary itself stays where the ground-truth stage wrote it (`gt_paths[label]`)."""
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
                info.append({"section": r.section.model_dump(), "method": r.dictionary.method, "ld_clean": r.ld_clean,
                             "ld_meanabl": r.ld_meanabl, "floor": r.floor, "ground_truth": gt_paths[label]})
            save_file(tensors, str(tmp / "refs.safetensors"))
            (tmp / "refs.json").write_text(json.dumps(info, indent=1))
    return d


def load_references(d: Path) -> list[SectionReference]:
    if not is_complete(d):
        raise StoreError(f"no complete section references at {d}; rerun the evaluation")
    tensors = load_file(str(Path(d) / "refs.safetensors"))
    out = []
    for item in json.loads((Path(d) / "refs.json").read_text()):
        section = CrossSection(**item["section"])
        label = section.label
        dic = gt_store.load_dictionary(Path(item["ground_truth"]) / f"{item['method']}.safetensors")
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
    return json.loads((Path(d) / "core.json").read_text())


def write_part(d: Path, rows: list[dict], meta: dict[str, Any]) -> Path:
    if not is_complete(d):
        with write_once(d, meta) as tmp:
            score_frame(rows).write_parquet(tmp / "scores.parquet")
    return d


def read_part(d: Path) -> pl.DataFrame:
    return pl.read_parquet(Path(d) / "scores.parquet")


def write_run(d: Path, scores: pl.DataFrame, board: pl.DataFrame, failures: pl.DataFrame,
              meta: dict[str, Any]) -> Path:
    if not is_complete(d):
        with write_once(d, meta) as tmp:
            scores.write_parquet(tmp / "scores.parquet")
            board.write_parquet(tmp / "leaderboard.parquet")
            failures.write_parquet(tmp / "failures.parquet")
    return d

