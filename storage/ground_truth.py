"""Ground-truth outputs: ground_truth/parts/<key>/ (one cross-section: dictionaries + quality) and
ground_truth/<hash>/quality.parquet over all of them."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from safetensors.torch import load_file, save_file

from storage.atomic import is_complete, write_once

QUALITY_COLUMNS = ["task", "attribute", "hook", "head", "role", "method", "sufficiency", "necessity", "edit_accuracy",
                   "no_intervention", "n_test", "n_edit", "n_unseen"]


def write_section(d: Path, dictionaries: dict, rows: list[dict], provenance: dict) -> Path:
    """Each method's dictionary as safetensors (mean + one vector per attribute value) with provenance, and the
    section's quality rows."""
    if not is_complete(d):
        with write_once(d, provenance) as tmp:
            for method, dic in dictionaries.items():
                tensors = {"mean": dic.mean.contiguous()}
                for attr, vecs in dic.vectors.items():
                    for value, u in vecs.items():
                        tensors[f"u/{attr}/{value}"] = u.contiguous()
                meta = {"method": method, "weights": json.dumps(dic.weights), **{k: str(v) for k, v in
                                                                                 provenance.items()}}
                save_file(tensors, str(tmp / f"{method}.safetensors"), metadata=meta)
            pl.DataFrame(rows).select(QUALITY_COLUMNS).write_parquet(tmp / "quality.parquet")
    return d


def dictionary_path(part: str | Path, method: str) -> Path:
    """Where `write_section` put one method's dictionary."""
    return Path(part) / f"{method}.safetensors"


def load_dictionary(path: Path):
    """Back to a `sage_core.dictionaries.Dictionary`."""
    from safetensors import safe_open

    from sage_core.dictionaries import Dictionary

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    vectors: dict = {}
    for key, t in tensors.items():
        if key.startswith("u/"):
            _, attr, value = key.split("/", 2)
            vectors.setdefault(attr, {})[value] = t
    return Dictionary(method=meta["method"], mean=tensors["mean"], vectors=vectors,
                      weights=json.loads(meta["weights"]))


def combine(final: Path, parts: list[str]) -> Path:
    if not is_complete(final):
        with write_once(final, {"parts": parts}) as tmp:
            pl.concat([pl.read_parquet(Path(p) / "quality.parquet") for p in parts], how="diagonal_relaxed") \
                .write_parquet(tmp / "quality.parquet")
    return final
