"""The ground truth's verdict per attribute: does any cross-section's dictionary meet the quality bar, and the
wording that says why (the report, the CLI and the fit flow show it)."""

from __future__ import annotations

import polars as pl

from sage_core.model.hooks import short_hook

QUALITY_BAR = 0.8  # sufficiency, necessity and edit accuracy a cross-section must reach (issue #5)
MIN_GAIN = 0.1  # edit accuracy must beat the no-intervention floor by this much, or there is nothing to judge
MIN_FOLLOW = 0.5  # share of the patch's changed predictions an edit must reproduce to count as following the patch
BAR_TEXT = (f"bar: sufficiency, necessity and edit accuracy >= {QUALITY_BAR}, edit accuracy >= {MIN_GAIN} above the "
            "no-intervention floor")


VERDICT_SCHEMA = {"task": pl.String, "attribute": pl.String, "verdict": pl.String, "hook": pl.String, "head": pl.Int64,
                  "role": pl.String, "method": pl.String, "sufficiency": pl.Float64, "necessity": pl.Float64,
                  "edit_accuracy": pl.Float64, "no_intervention": pl.Float64, "reason": pl.String}


def ground_truth_verdicts(quality: pl.DataFrame, bar: float = QUALITY_BAR, min_gain: float = MIN_GAIN,
                          min_follow: float = MIN_FOLLOW) -> pl.DataFrame:
    """One row per (task, attribute) of quality.parquet: does any cross-section's dictionary meet the bar, and if
    not, why. NaN figures (e.g. no test pair whose values were seen in fitting) count as missing. `verdict` is one of
    - "holds": some (cross-section, method) has sufficiency, necessity and edit accuracy >= `bar` and edit accuracy
      at least `min_gain` above the no-intervention floor (the row with the largest gain is named);
    - "not read": at every cross-section the ground-truth patch changes fewer than `min_gain` of the predictions, so
      the model does not read the attribute there and no edit can be judged;
    - "edit misses": where the patch changes at least `min_gain` of the predictions, no dictionary edit reproduces
      `min_follow` of those changes ((edit - floor) / (1 - floor)): the attribute's effect there is not a shift by a
      vector per value (it may depend on other attributes' values), or the fit is poor;
    - "below bar": some edit follows the patch, but no row reaches every bar (the row with the largest gain is named);
    - "no figures": every row is missing a figure.
    """
    figures = ["sufficiency", "necessity", "edit_accuracy", "no_intervention"]
    q = quality.with_columns(pl.col(c).cast(pl.Float64).fill_nan(None) for c in figures).with_columns(
        gain=pl.col("edit_accuracy") - pl.col("no_intervention"), patch_effect=1 - pl.col("no_intervention"))
    q = q.with_columns(follow=pl.col("gain") / pl.col("patch_effect").clip(lower_bound=1e-9))
    # issue #5's bar: sufficiency >= bar, so a reconstruction that overshoots the clean logit difference passes
    ok = (pl.col("sufficiency") >= bar) & (pl.col("necessity") >= bar) & (pl.col("edit_accuracy") >= bar) & (
        pl.col("gain") >= min_gain)
    by_gain = ["gain", "edit_accuracy", "necessity"]
    rows = []
    for (task, attr), g in q.group_by("task", "attribute", maintain_order=True):
        g = g.filter(pl.col("patch_effect").is_not_null() & pl.col("gain").is_not_null())
        read = g.filter(pl.col("patch_effect") >= min_gain)
        following = read.filter(pl.col("follow") >= min_follow)
        if g.is_empty():
            rows.append({"task": task, "attribute": attr, "verdict": "no figures",
                         "reason": "no cross-section has an edit accuracy and a no-intervention figure"})
            continue
        if not (passing := g.filter(ok)).is_empty():
            verdict, best = "holds", _first(passing, by_gain)
            why = f"meets the bar at {_where(best)}: {_figures(best)}"
        elif read.is_empty():
            verdict, best = "not read", _first(g, ["patch_effect", "gain"])
            why = (f"the ground-truth patch changes at most {best['patch_effect']:.0%} of predictions at any selected "
                   f"cross-section ({_where(best)}): the model does not read {attr} there")
        elif following.is_empty():
            verdict, best = "edit misses", _first(read, ["follow", "patch_effect"])
            why = (f"the patch changes {best['patch_effect']:.0%} of predictions at {_where(best)}, and the dictionary "
                   f"edit reproduces {max(best['follow'], 0):.0%} of those changes: {_figures(best)}")
        else:
            verdict, best = "below bar", _first(following, by_gain)
            why = f"the edit follows the patch at {_where(best)}, but misses a bar of {bar}: {_figures(best)}"
        rows.append({"task": task, "attribute": attr, "verdict": verdict, "hook": best["hook"], "head": best["head"],
                     "role": best["role"], "method": best["method"], "sufficiency": best["sufficiency"],
                     "necessity": best["necessity"], "edit_accuracy": best["edit_accuracy"],
                     "no_intervention": best["no_intervention"], "reason": why})
    return pl.DataFrame(rows, schema=VERDICT_SCHEMA)


def verdict_line(row: dict) -> str:
    """`attribute: verdict - reason`, one line per row of `ground_truth_verdicts`."""
    return f"{row['attribute']}: {row['verdict']} - {row['reason']}"


def _first(df: pl.DataFrame, by: list[str]) -> dict:
    """The row largest in `by` (in order); ties keep the table's order, so every caller names the same row."""
    return df.sort(by, descending=True, nulls_last=True, maintain_order=True).row(0, named=True)


def _where(row: dict) -> str:
    head = f".H{row['head']}" if row["head"] is not None else ""
    return f"{short_hook(row['hook'])}{head}@{row['role']} ({row['method']})"


def _figures(row: dict) -> str:
    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    return (f"sufficiency {f(row['sufficiency'])}, necessity {f(row['necessity'])}, edit accuracy "
            f"{f(row['edit_accuracy'])} over a floor of {f(row['no_intervention'])}")
