"""The controls' reading of the leaderboard: whether oracle > every trained SAE > random holds on a task
(`controls_verdict`), how many trained SAEs beat the random control per metric (`random_floor`), and why the random
control is (or is not) a floor for a metric (`CONTROL_NOTES`). Wording only: nothing here is scored, so editing a note
recomputes no score (the scoring stages' cache keys do not follow this module).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from report.tables import fmt, num, short_sae
from sage_core.scoring import definitions as defs
from sage_core.scoring.leaderboard import CORE_METRICS, LEADERBOARD_METRICS

# which way is better, and why the random control is (or is not) a floor, as each metric defines it; metrics without
# a note compare the control's decoder, with the best codes that decoder allows, against the trained SAE's
LOWER_IS_BETTER = tuple(m.name for m in defs.METRICS.values() if m.better == "lower")
CLOSER_TO_ONE = tuple(m.name for m in defs.METRICS.values() if m.better == "closer to 1")
CONTROL_NOTES = {m.name: m.control_note for m in defs.METRICS.values() if m.control_note}
NOT_MEASURED = "not measured for the random control (core metrics: native SAEs on background text only)"
RANDOM_FLOOR_SCHEMA = {"task": pl.String, "metric": pl.String, "better": pl.String, "random": pl.Float64,
                       "n_trained": pl.Int64, "n_better": pl.Int64, "share_better": pl.Float64, "note": pl.String}


def random_floor(board: pl.DataFrame) -> pl.DataFrame:
    """Per task and metric: how many trained SAEs do better than the random control (leaderboard means over each
    one's cross-sections). Better is higher, lower (`LOWER_IS_BETTER`) or closer to 1 (`CLOSER_TO_ONE`); a tie is not
    better; trained SAEs without a value are not counted. With several random rows, the best of them is the floor."""
    rows = []
    metrics = [m for m in (*LEADERBOARD_METRICS, *CORE_METRICS) if m in board.columns]
    for (task,), g in board.group_by("task", maintain_order=True):
        for m in metrics:
            direction = "lower" if m in LOWER_IS_BETTER else "closer to 1" if m in CLOSER_TO_ONE else "higher"

            def goodness(col: pl.DataFrame, m=m, direction=direction) -> list[float]:
                v = col[m].cast(pl.Float64).fill_nan(None)
                v = 1 - (1 - v).abs() if direction == "closer to 1" else -v if direction == "lower" else v
                return [x for x in v.to_list() if x is not None]

            randoms = goodness(g.filter(pl.col("kind") == "random"))
            trained = goodness(g.filter(pl.col("kind") == "trained"))
            floor = max(randoms) if randoms else None
            n_better = sum(t > floor for t in trained) if floor is not None else None
            raw = None if floor is None else (-floor if direction == "lower" else floor)
            if direction == "closer to 1" and floor is not None:  # report the control's own value, not its closeness
                raw = next(v for v in g.filter(pl.col("kind") == "random")[m].cast(pl.Float64).fill_nan(None)
                           if v is not None and 1 - abs(1 - v) == floor)
            rows.append({"task": task, "metric": m, "better": direction, "random": raw, "n_trained": len(trained),
                         "n_better": n_better, "share_better": n_better / len(trained) if trained and
                         n_better is not None else None,
                         "note": CONTROL_NOTES.get(m, "") if floor is not None else NOT_MEASURED})
    return pl.DataFrame(rows, schema=RANDOM_FLOOR_SCHEMA)


def _matched_verdict(rows: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """oracle > SAE > random, each SAE against the controls' summaries over the same cross-sections."""
    trained = [r for r in rows if r.get("kind") == "trained" and not math.isnan(num(r.get("summary")))
               and not math.isnan(num(r.get("oracle_same"))) and not math.isnan(num(r.get("random_same")))]
    if not trained:
        return None, "not checked: no trained SAE with a summary and matched controls"
    over = [r for r in trained if num(r["summary"]) >= num(r["oracle_same"])]
    under = [r for r in trained if num(r["summary"]) <= num(r["random_same"])]
    # named as the tables name them (`short_sae`)
    above = [f"{short_sae(str(r['sae']))} ({num(r['summary']):.3f} vs oracle {num(r['oracle_same']):.3f})"
             for r in over]
    below = [f"{short_sae(str(r['sae']))} ({num(r['summary']):.3f} vs random {num(r['random_same']):.3f})"
             for r in under]
    n_ok = len(trained) - len({id(r) for r in over + under})
    if above or below:
        parts = ([f"at or above the oracle: {', '.join(above)}"] if above else []) + \
                ([f"at or below random: {', '.join(below)}"] if below else [])
        return False, (f"oracle > SAE > random (same cross-sections) holds for {n_ok} of {len(trained)} trained SAEs; "
                       + "; ".join(parts))
    margin_o = min(num(r["oracle_same"]) - num(r["summary"]) for r in trained)
    margin_r = min(num(r["summary"]) - num(r["random_same"]) for r in trained)
    return True, (f"oracle > SAE > random (same cross-sections) holds for all {len(trained)} trained SAEs "
                  f"(smallest margins: {margin_o:.3f} below the oracle, {margin_r:.3f} above random)")


def controls_verdict(leaderboard: pl.DataFrame, task: str) -> tuple[bool | None, str]:
    """Whether oracle > every trained SAE > random holds on `summary` for a task: (holds, one-line explanation).

    `holds` is None when it cannot be checked (no oracle, no random or no trained SAE with a summary).
    """
    rows = leaderboard.filter(pl.col("task") == task).to_dicts()
    if rows and "oracle_same" in rows[0] and any(r.get("kind") == "trained" and r.get("oracle_same") is not None
                                                 for r in rows):
        return _matched_verdict(rows)
    by_kind: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        # named as the tables name them (`short_sae`)
        by_kind.setdefault(str(r.get("kind")), []).append((short_sae(str(r["sae"])), num(r.get("summary"))))
    oracles = [(s, v) for s, v in by_kind.get("oracle", []) if not math.isnan(v)]
    randoms = [(s, v) for s, v in by_kind.get("random", []) if not math.isnan(v)]
    trained = [(s, v) for s, v in by_kind.get("trained", []) if not math.isnan(v)]
    missing = [k for k, lst in (("oracle", oracles), ("random", randoms), ("trained", trained)) if not lst]
    if missing:
        return None, f"not checked: no {', '.join(missing)} SAE with a summary score"
    o_min = min(oracles, key=lambda t: t[1])
    r_max = max(randoms, key=lambda t: t[1])
    problems: list[str] = []
    above = [f"{s} ({v:.3f})" for s, v in sorted(trained, key=lambda t: -t[1]) if v >= o_min[1]]
    below = [f"{s} ({v:.3f})" for s, v in sorted(trained, key=lambda t: t[1]) if v <= r_max[1]]
    if above:
        problems.append(f"trained at or above oracle {o_min[0]} ({o_min[1]:.3f}): {', '.join(above)}")
    if below:
        problems.append(f"trained at or below random {r_max[0]} ({r_max[1]:.3f}): {', '.join(below)}")
    if o_min[1] <= r_max[1]:
        problems.append(f"oracle {o_min[0]} ({o_min[1]:.3f}) not above random {r_max[0]} ({r_max[1]:.3f})")
    n_unscored = sum(math.isnan(v) for lst in by_kind.values() for _, v in lst)
    note = f" ({n_unscored} SAE(s) without a summary not counted)" if n_unscored else ""
    if problems:
        return False, "oracle > every trained SAE > random does NOT hold; " + "; ".join(problems) + note
    return True, (f"oracle > every trained SAE > random holds (oracle {o_min[1]:.3f} > trained "
                  f"{min(v for _, v in trained):.3f}–{max(v for _, v in trained):.3f} > random {r_max[1]:.3f})" + note)


def random_floor_lines(leaderboard: pl.DataFrame, task: str) -> list[str]:
    """Per metric, how many trained SAEs beat the random control, the metrics it matches for most of them, and why
    the control is (or is not) a floor where that needs saying."""
    if "kind" not in leaderboard.columns:
        return []
    t = random_floor(leaderboard.filter(pl.col("task") == task))
    rows = t.filter(pl.col("share_better").is_not_null()).to_dicts()
    if not rows:
        return []
    lines = ["**Trained SAEs better than the random control** (per metric, leaderboard means; a tie is not better):",
             "", "| metric | better | random | trained SAEs better | share |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['metric']} | {r['better']} | {fmt(r['random'])} | {r['n_better']} of {r['n_trained']} | "
              f"{r['share_better']:.0%} |" for r in rows]
    lines.append("")
    matched = [f"{r['metric']} ({r['share_better']:.0%})" for r in rows if r["share_better"] < 0.5]
    if matched:
        lines += [f"The random control matches or beats most trained SAEs on: {', '.join(matched)}.", ""]
    lines += [f"- {r['metric']}: {r['note']}" for r in rows if r["note"]]
    missing = t.filter(pl.col("share_better").is_null() & (pl.col("n_trained") > 0))["metric"].to_list()
    if missing:
        lines.append(f"- not measured for the random control: {', '.join(missing)}")
    return lines + [""]
