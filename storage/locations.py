"""Location-search outputs: locations/<hash>/{ranking.parquet, validation.parquet, parts/, heatmaps/}."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sage_core.ground_truth.cross_section import CrossSection
from storage.atomic import is_whole, verify_file, write_once
from storage.home import SageHome
from storage.integrity import read_parquet
from storage.refs import LocationsRef

RANKING_SCHEMA = {
    "task": pl.String, "attribute": pl.String, "hook": pl.String, "kind": pl.String, "layer": pl.Int32,
    "head": pl.Int32, "role": pl.String, "group": pl.String, "atp": pl.Float64, "rank": pl.Int32,
    "selected": pl.Boolean, "patch_effect": pl.Float64,
}


def write_part(d: Path, rows: list[dict], summary: dict, figure) -> Path:
    """One (task, attribute): its ranking rows, its validation summary and its heatmap, written once."""
    if not is_whole(d):
        with write_once(d, {"task": summary["task"], "attribute": summary["attribute"]}, kind="locations-part") as tmp:
            pl.DataFrame(rows, schema=RANKING_SCHEMA, orient="row").write_parquet(tmp / "ranking.parquet")
            pl.DataFrame([summary]).write_parquet(tmp / "validation.parquet")
            figure.savefig(tmp / "heatmap.png", dpi=110)
    return d


def read_ranking(d: str | Path) -> pl.DataFrame:
    """ranking.parquet of a part or of the combined output, checked against its directory's marker."""
    return read_parquet(Path(d) / "ranking.parquet", Path(d))


def read_validation(d: str | Path) -> pl.DataFrame:
    return read_parquet(Path(d) / "validation.parquet", Path(d))


def combine(final: Path, parts: list[Path]) -> Path:
    """locations/<hash>/ranking.parquet and validation.parquet over every part, plus a heatmaps/ folder."""
    if not is_whole(final):
        with write_once(final, {"parts": [str(p) for p in parts]}, kind="locations") as tmp:
            pl.concat([read_ranking(p) for p in parts]).write_parquet(tmp / "ranking.parquet")
            validations = [read_validation(p) for p in parts]
            pl.concat(validations, how="diagonal_relaxed").write_parquet(tmp / "validation.parquet")
            (tmp / "heatmaps").mkdir()
            for p, val in zip(parts, validations, strict=True):
                meta = val.row(0, named=True)
                (tmp / "heatmaps" / f"{meta['task']}-{meta['attribute']}.png").write_bytes(
                    verify_file(Path(p) / "heatmap.png", Path(p)).read_bytes())
    return final


def selected_sections(home: SageHome, locations: LocationsRef, task: str, per_group: int) -> list[CrossSection]:
    """The location search's kept cross-sections of a task (the top `per_group` per attribute and group), deduped."""
    r = read_ranking(home.at(locations)).filter((pl.col("task") == task) & pl.col("selected"))
    r = r.filter(pl.col("rank") <= per_group)
    seen, out = set(), []
    for row in r.sort("attribute", "group", "rank").iter_rows(named=True):
        key = (row["hook"], row["head"], row["role"])
        if key not in seen:
            seen.add(key)
            out.append(CrossSection(hook=row["hook"], head=row["head"], role=row["role"]))
    return out
