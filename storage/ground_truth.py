"""Ground-truth outputs: ground_truth/parts/<key>/ (one cross-section: dictionaries + quality) and
ground_truth/<hash>/quality.parquet over all of them."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from safetensors.torch import save_file

from storage.atomic import StoreError, is_whole, write_once
from storage.home import SageHome
from storage.integrity import load_safetensors, read_parquet
from storage.records import read_record, refs_whole, write_record
from storage.refs import GroundTruthRef
from storage.tables import write_parquet

QUALITY_COLUMNS = ["task", "attribute", "hook", "head", "role", "method", "sufficiency", "necessity", "edit_accuracy",
                   "no_intervention", "n_test", "n_edit", "n_unseen"]


def write_section(d: Path, dictionaries: dict, rows: list[dict], provenance: dict) -> Path:
    """Each method's dictionary as safetensors (mean + one vector per attribute value) with provenance, and the
    section's quality rows."""
    if not is_whole(d):
        with write_once(d, provenance, kind="ground-truth-section") as tmp:
            for method, dic in dictionaries.items():
                tensors = {"mean": dic.mean.contiguous()}
                for attr, vecs in dic.vectors.items():
                    for value, u in vecs.items():
                        tensors[f"u/{attr}/{value}"] = u.contiguous()
                meta = {"method": method, "weights": json.dumps(dic.weights), **{k: str(v) for k, v in
                                                                                 provenance.items()}}
                save_file(tensors, str(tmp / f"{method}.safetensors"), metadata=meta)
            write_parquet(pl.DataFrame(rows).select(QUALITY_COLUMNS), tmp / "quality.parquet")
    return d


def dictionary_path(part: str | Path, method: str) -> Path:
    """Where `write_section` put one method's dictionary."""
    return Path(part) / f"{method}.safetensors"


def load_dictionary(path: Path):
    """Back to a `sage_core.ground_truth.dictionaries.Dictionary`, the file checked against its section's marker first."""
    from sage_core.ground_truth.dictionaries import Dictionary

    tensors, meta = load_safetensors(path)
    if "mean" not in tensors or "method" not in meta or "weights" not in meta:
        raise StoreError(f"{path} is not a SAGE dictionary (no mean/method/weights); rerun the command: the "
                         f"ground-truth stage rebuilds {Path(path).parent}")
    vectors: dict = {}
    for key, t in tensors.items():
        if key.startswith("u/"):
            _, attr, value = key.split("/", 2)
            vectors.setdefault(attr, {})[value] = t
    return Dictionary(method=meta["method"], mean=tensors["mean"], vectors=vectors,
                      weights=json.loads(meta["weights"]))


def read_quality(d: str | Path) -> pl.DataFrame:
    """quality.parquet of a section or of the combined output, checked against its directory's marker."""
    return read_parquet(Path(d) / "quality.parquet", Path(d))


def combine(final: Path, parts: list[str]) -> Path:
    if not is_whole(final):
        with write_once(final, {"parts": parts}, kind="ground-truth") as tmp:
            write_parquet(pl.concat([read_quality(p) for p in parts], how="diagonal_relaxed"), tmp / "quality.parquet")
    return final


def write_gt_record(home: SageHome, key: str, ground_truth: GroundTruthRef) -> Path:
    """Record what the fit flow produced for `key` (everything that decides it), for the next evaluation."""
    return write_record(home.ground_truth_record(key), key, ground_truth)


def read_gt_record(home: SageHome, key: str) -> GroundTruthRef | None:
    """The recorded ground truth for `key` while it and every part it names are still whole on disk, else None."""
    return read_record(home.ground_truth_record(key), key, lambda gt: refs_whole(home, [gt, *gt.parts]),
                       GroundTruthRef)
