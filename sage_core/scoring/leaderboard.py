"""Typed results of an evaluation (pydantic, exported as JSON schema) and the leaderboard built from them.

scores.parquet is long form: one `ScoreRow` per (SAE, task, cross-section, mapping, metric). leaderboard.parquet has
one `LeaderboardRow` per (SAE, task): each metric's mean over the cross-sections the SAE reaches, plus its core
metrics on background text.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, Field, create_model

from sage_core.scoring import definitions as defs
from sage_core.scoring.rows import SCORE_SCHEMA, Kind, MappingName, ScoreRow, score_frame, sufficiency_closeness

__all__ = ["SCORE_SCHEMA", "Kind", "MappingName", "ScoreRow", "score_frame", "sufficiency_closeness"]


LEADERBOARD_METRICS = defs.names("task")
CORE_METRICS = defs.names("core")


class _Row(BaseModel):
    sae: str
    task: str
    kind: Kind
    mapping: MappingName = Field(description="native, projection, difference or control; where a bracket's P_c is the "
                                             "identity, difference equals projection and is scored once, as projection")
    status: str = Field(description="'ok', or 'failed: <reason>'")
    n_sections: int = Field(description="cross-sections of the task this SAE reaches (its hook, or by projection)")


def _field(m: defs.Metric):
    where = ("mean over the cross-sections the SAE reaches" if m.scope == "task"
             else "core metric on background text (native SAEs only)")
    return (float | None, Field(None, title=m.title, description=f"{m.description}; {where}; range "
                                                                 f"{m.range_text()}, {m.better} is better"))


# one column per defined metric (sage_core.scoring.definitions), then the controls over the same cross-sections
LeaderboardRow = create_model(
    "LeaderboardRow", __base__=_Row,
    **{m.name: _field(m) for m in defs.METRICS.values()},
    oracle_same=(float | None, Field(None, description="the oracle's summary over the same cross-sections")),
    random_same=(float | None, Field(None, description="the random control's summary over the same cross-sections")),
)


def json_schemas() -> dict[str, dict]:
    return {"ScoreRow": ScoreRow.model_json_schema(), "LeaderboardRow": LeaderboardRow.model_json_schema()}


def leaderboard(scores: pl.DataFrame, units: pl.DataFrame, core: pl.DataFrame) -> pl.DataFrame:
    """`units`: sae, task, kind, mapping, status (one row per scored or failed unit); `core`: sae + CORE_METRICS.

    Each metric is averaged over the unit's cross-sections (NaN values are left out of the mean).
    """
    wide = (scores.filter(pl.col("metric").is_in(LEADERBOARD_METRICS))
            .with_columns(pl.col("value").fill_nan(None))
            .group_by("sae", "task", "metric").agg(pl.col("value").mean())
            .pivot(on="metric", index=["sae", "task"], values="value"))
    n = scores.group_by("sae", "task").agg(pl.struct("hook", "head", "role").n_unique().alias("n_sections"))
    out = units.join(n, on=["sae", "task"], how="left").join(wide, on=["sae", "task"], how="left")
    if not core.is_empty():
        out = out.join(core, on="sae", how="left")
    for m in (*LEADERBOARD_METRICS, *CORE_METRICS):
        if m not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    out = out.with_columns(pl.col("n_sections").fill_null(0)).join(matched_controls(scores), on=["sae", "task"],
                                                                     how="left")
    cols = list(LeaderboardRow.model_fields)
    return out.select(cols).sort("task", "summary", descending=[False, True], nulls_last=True)



def matched_controls(scores: pl.DataFrame) -> pl.DataFrame:
    """Per (sae, task): the oracle's and the random control's mean summary over exactly the cross-sections that SAE
    reaches — an SAE is compared with the controls where it is scored, not where it is not."""
    key = ["task", "hook", "head", "role"]
    summ = scores.filter(pl.col("metric") == "summary").with_columns(pl.col("value").fill_nan(None))
    ctrl = {name: summ.filter(pl.col("sae") == f"control:{name}").select(*key, pl.col("value").alias(name))
            for name in ("oracle", "random")}
    out = summ.select("sae", *key)
    for c in ctrl.values():
        out = out.join(c, on=key, how="left", nulls_equal=True)
    return out.group_by("sae", "task").agg(pl.col("oracle").mean().alias("oracle_same"),
                                           pl.col("random").mean().alias("random_same"))
