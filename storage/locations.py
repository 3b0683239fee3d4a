"""Location-search outputs: locations/<hash>/{ranking.parquet, validation.parquet, parts/, heatmaps/}."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from storage.atomic import is_complete, write_once

RANKING_SCHEMA = {
    "task": pl.String, "attribute": pl.String, "hook": pl.String, "kind": pl.String, "layer": pl.Int32,
    "head": pl.Int32, "role": pl.String, "group": pl.String, "atp": pl.Float64, "rank": pl.Int32,
    "selected": pl.Boolean, "patch_effect": pl.Float64,
}


def write_part(d: Path, rows: list[dict], summary: dict, figure) -> Path:
    """One (task, attribute): its ranking rows, its validation summary and its heatmap, written once."""
    if not is_complete(d):
        with write_once(d, {"task": summary["task"], "attribute": summary["attribute"]}) as tmp:
            pl.DataFrame(rows, schema=RANKING_SCHEMA, orient="row").write_parquet(tmp / "ranking.parquet")
            pl.DataFrame([summary]).write_parquet(tmp / "validation.parquet")
            figure.savefig(tmp / "heatmap.png", dpi=110)
    return d


def combine(final: Path, parts: list[Path]) -> Path:
    """locations/<hash>/ranking.parquet and validation.parquet over every part, plus a heatmaps/ folder."""
    if not is_complete(final):
        with write_once(final, {"parts": [str(p) for p in parts]}) as tmp:
            pl.concat([pl.read_parquet(Path(p) / "ranking.parquet") for p in parts]).write_parquet(
                tmp / "ranking.parquet")
            pl.concat([pl.read_parquet(Path(p) / "validation.parquet") for p in parts], how="diagonal_relaxed") \
                .write_parquet(tmp / "validation.parquet")
            (tmp / "heatmaps").mkdir()
            for p in parts:
                meta = pl.read_parquet(Path(p) / "validation.parquet").row(0, named=True)
                (tmp / "heatmaps" / f"{meta['task']}-{meta['attribute']}.png").write_bytes(
                    (Path(p) / "heatmap.png").read_bytes())
    return final
