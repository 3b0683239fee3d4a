"""Typed results of an evaluation (pydantic, exported as JSON schema) and the leaderboard built from them.

scores.parquet is long form: one `ScoreRow` per (SAE, task, cross-section, mapping, metric). leaderboard.parquet has
one `LeaderboardRow` per (SAE, task): each metric's mean over the cross-sections the SAE reaches, plus its core
metrics on background text.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

Kind = Literal["trained", "oracle", "random"]
MappingName = Literal["native", "projection", "difference", "control"]

LEADERBOARD_METRICS = ("summary", "explained_variance", "l0", "sufficiency", "faithfulness", "necessity",
                       "edit_accuracy_k1",
                       "edit_accuracy_k4", "edit_gain_k4", "edit_magnitude_k4", "f1_mean", "coverage", "mcc")
CORE_METRICS = ("ce_loss_recovered", "kl", "core_explained_variance", "core_l0", "dead_share")


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


class LeaderboardRow(BaseModel):
    sae: str
    task: str
    kind: Kind
    mapping: MappingName
    status: str = Field(description="'ok', or 'failed: <reason>'")
    n_sections: int = Field(description="cross-sections of the task this SAE reaches (its hook, or by projection)")
    summary: float | None = Field(description="mean of the normalised parts; see sage_core.scoring")
    explained_variance: float | None = None
    l0: float | None = None
    sufficiency: float | None = None
    faithfulness: float | None = Field(None, description="(LD_recon - LD_meanabl) / (LD_clean - LD_meanabl)")
    necessity: float | None = None
    edit_accuracy_k1: float | None = None
    edit_accuracy_k4: float | None = None
    edit_gain_k4: float | None = None
    edit_magnitude_k4: float | None = None
    f1_mean: float | None = None
    coverage: float | None = None
    mcc: float | None = None
    ce_loss_recovered: float | None = Field(None, description="core metrics on background text (native SAEs only)")
    kl: float | None = None
    core_explained_variance: float | None = None
    core_l0: float | None = None
    dead_share: float | None = None
    oracle_same: float | None = Field(None, description="the oracle's summary over the same cross-sections")
    random_same: float | None = Field(None, description="the random control's summary over the same cross-sections")


def json_schemas() -> dict[str, dict]:
    return {"ScoreRow": ScoreRow.model_json_schema(), "LeaderboardRow": LeaderboardRow.model_json_schema()}


SCORE_SCHEMA = {"sae": pl.String, "task": pl.String, "hook": pl.String, "head": pl.Int64, "role": pl.String,
                "mapping": pl.String, "metric": pl.String, "value": pl.Float64}


def score_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCORE_SCHEMA) if rows else pl.DataFrame(schema=SCORE_SCHEMA)


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


QUALITY_BAR = 0.8  # sufficiency, necessity and edit accuracy a cross-section must reach (issue #5)
MIN_GAIN = 0.1  # edit accuracy must beat the no-intervention floor by this much, or there is nothing to judge


def ground_truth_verdicts(quality: pl.DataFrame, bar: float = QUALITY_BAR, min_gain: float = MIN_GAIN) -> pl.DataFrame:
    """One row per (task, attribute) of quality.parquet: does any cross-section's dictionary meet the bar, and if
    not, why. `verdict` is one of
    - "holds": some (cross-section, method) has sufficiency, necessity and edit accuracy >= `bar` and edit accuracy
      at least `min_gain` above the no-intervention floor (the best such row is named);
    - "not read": at every cross-section the ground-truth patch changes fewer than `min_gain` of the predictions, so
      the model does not read the attribute there and no edit can be judged;
    - "not additive": the patch changes predictions somewhere, but no dictionary edit follows it `min_gain` better
      than no intervention: the attribute acts there through the values of other attributes (e.g. which name sits where),
      which a sum of per-attribute vectors cannot express;
    - "below bar": edits follow the patch somewhere, but no row reaches every bar (the best edit gain is named).
    """
    q = quality.with_columns(gain=pl.col("edit_accuracy") - pl.col("no_intervention"),
                             patch_effect=1 - pl.col("no_intervention"))
    ok = (pl.col("sufficiency") >= bar) & (pl.col("necessity") >= bar) & (pl.col("edit_accuracy") >= bar) & (
        pl.col("gain") >= min_gain)
    rows = []
    for (task, attr), g in q.group_by("task", "attribute", maintain_order=True):
        passing = g.filter(ok)
        read = g.filter(pl.col("patch_effect") >= min_gain)
        if len(passing):
            verdict, best = "holds", passing.sort("gain", descending=True).row(0, named=True)
            why = f"meets the bar at {_where(best)}"
        elif not len(read):
            verdict, best = "not read", g.sort("patch_effect", descending=True).row(0, named=True)
            why = (f"the ground-truth patch changes at most {best['patch_effect']:.0%} of predictions at any selected "
                   f"cross-section: the model does not read {attr} there")
        elif read["gain"].max() < min_gain:
            verdict, best = "not additive", read.sort("patch_effect", descending=True).row(0, named=True)
            why = (f"the patch changes {best['patch_effect']:.0%} of predictions at {_where(best)}, but the dictionary "
                   f"edit beats no intervention by less than {min_gain} ({best['edit_accuracy']:.2f} vs "
                   f"{best['no_intervention']:.2f}): {attr} is not a sum of per-value vectors there")
        else:
            verdict, best = "below bar", read.sort("gain", descending=True).row(0, named=True)
            why = (f"best edit gain at {_where(best)}: edit accuracy {best['edit_accuracy']:.2f} over a floor of "
                   f"{best['no_intervention']:.2f}, sufficiency {best['sufficiency']:.2f}, necessity "
                   f"{best['necessity']:.2f}; bar {bar}")
        rows.append({"task": task, "attribute": attr, "verdict": verdict, "hook": best["hook"], "head": best["head"],
                     "role": best["role"], "method": best["method"], "sufficiency": best["sufficiency"],
                     "necessity": best["necessity"], "edit_accuracy": best["edit_accuracy"],
                     "no_intervention": best["no_intervention"], "reason": why})
    return pl.DataFrame(rows, schema={"task": pl.String, "attribute": pl.String, "verdict": pl.String,
                                      "hook": pl.String, "head": pl.Int64, "role": pl.String, "method": pl.String,
                                      "sufficiency": pl.Float64, "necessity": pl.Float64,
                                      "edit_accuracy": pl.Float64, "no_intervention": pl.Float64,
                                      "reason": pl.String})


def _where(row: dict) -> str:
    head = f" head {row['head']}" if row["head"] is not None else ""
    return f"{row['hook']}{head} @ {row['role']} ({row['method']})"
