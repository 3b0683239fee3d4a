"""The rows a scoring stage writes (one `ScoreRow` per SAE, task, cross-section, mapping and metric) and the small
helpers the scoring stage itself uses. Kept apart from `results` (leaderboard, verdict wording): the score parts'
cache keys follow this module's code, not the report's.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

Kind = Literal["trained", "oracle", "random"]
MappingName = Literal["native", "projection", "difference", "control"]


class ScoreRow(BaseModel):
    """One measurement: metric `metric` of SAE `sae` on `task` at cross-section (hook, head, role) under `mapping`."""

    sae: str
    task: str
    hook: str
    head: int | None = None
    role: str
    mapping: MappingName
    metric: str = Field(description="e.g. explained_variance, sufficiency, edit_accuracy_k4, f1:io=Mary, summary")
    value: float | None


SCORE_SCHEMA = {"sae": pl.String, "task": pl.String, "hook": pl.String, "head": pl.Int64, "role": pl.String,
                "mapping": pl.String, "metric": pl.String, "value": pl.Float64}


def score_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCORE_SCHEMA) if rows else pl.DataFrame(schema=SCORE_SCHEMA)


def sufficiency_closeness(col: str = "sufficiency") -> pl.Expr:
    """1 - |1 - sufficiency|: 1 is best, and overshooting the clean logit difference counts as far off as falling
    short of it."""
    return 1 - (1 - pl.col(col)).abs()
