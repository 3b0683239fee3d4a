"""The report's notes on what it does not show and on figures that look wrong but are not: which SAEs could not be
scored on a task and why (unreached: their hook holds none of the task's kept cross-sections; failed: the error), and
why some figures exceed 1 (they are ratios of logit differences or losses, not shares). The markdown report and the
Prefect summary artifact both carry them (`report.summary.summary_markdown`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import polars as pl

from report.tables import first_line, md_escape, num
from sage_core.model.hooks import short_hook
from sage_core.scoring import definitions as defs

MAX_NAMES = 8  # SAEs named per group before "and N more": a zoo of 30 stays a few lines

# Metrics whose formula is a ratio that can exceed 1, with why (each metric's definition says whether it is bounded
# above); every other figure is a share, a correlation or clipped, and stays <= 1.
ABOVE_ONE = {m.name: m.range_note for m in defs.METRICS.values() if m.high is None and m.range_note}
UNREACHED_TEXT = ("an SAE is scored on a task only at the task's kept cross-sections its hook holds (a projection pair: "
                  "the sub-layer it brackets); these hold none, so they have no row for that task")


def kept_hooks(scores: pl.DataFrame) -> dict[str, list[str]]:
    """Per task, the hooks of its scored cross-sections (the controls reach every kept one), in first-seen order."""
    if scores.height == 0 or not {"task", "hook"} <= set(scores.columns):
        return {}
    pairs = scores.select("task", "hook").unique(maintain_order=True)
    out: dict[str, list[str]] = {}
    for task, hook in pairs.iter_rows():
        out.setdefault(str(task), []).append(str(hook))
    return out


def _names(names: list[str], prefix: str = "") -> str:
    """`a, b, c and 4 more`, each name without `prefix` (a zoo SAE's name starts with its hook)."""
    short = [n.removeprefix(prefix) if prefix and n.startswith(prefix) and n != prefix else n for n in names]
    shown = ", ".join(short[:MAX_NAMES])
    return shown + (f" and {len(short) - MAX_NAMES} more" if len(short) > MAX_NAMES else "")


def unreached_lines(unreached: Iterable[dict[str, Any]] | None, kept: dict[str, list[str]] | None = None) -> list[str]:
    """One bullet per task: how many SAEs reach none of its kept cross-sections, grouped by their hook, and where the
    kept ones are. `unreached`: {"sae", "task", "hook"} entries; `kept`: task -> hooks of its kept cross-sections."""
    by_task: dict[str, dict[str, list[str]]] = {}
    for e in unreached or []:
        missing = {"sae", "task", "hook"} - set(e)
        if missing:
            raise ValueError(f"an unreached entry lacks {', '.join(sorted(missing))}: pass {{'sae', 'task', 'hook'}} "
                             f"dicts (got {sorted(e)})")
        names = by_task.setdefault(str(e["task"]), {}).setdefault(str(e["hook"]), [])
        if str(e["sae"]) not in names:
            names.append(str(e["sae"]))
    lines = []
    for task, hooks in by_task.items():
        n = sum(len(v) for v in hooks.values())
        where = (kept or {}).get(task)
        at = f" (kept cross-sections at {', '.join(short_hook(h) for h in where)})" if where else ""
        groups = "; ".join(f"{short_hook(h)}: {len(v)} ({_names(v, h + '--')})" for h, v in hooks.items())
        lines.append(f"- {md_escape(task)}{at}: {n} SAE{'s' if n != 1 else ''} not reached; by hook: "
                     f"{md_escape(groups)}")
    return lines


def failure_lines(leaderboard: pl.DataFrame, failures: pl.DataFrame | None) -> list[str]:
    """One bullet per distinct error (its first line), naming the SAEs it stopped and where: failures' rows
    (sae, stage?, error) and leaderboard rows whose status is not "ok". An SAE named "*" stands for every SAE."""
    groups: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()

    def add(sae: str, where: str, error: str) -> None:
        if (sae, error) in seen:
            return
        seen.add((sae, error))
        who = "all SAEs" if sae == "*" else f"`{sae}`"
        groups.setdefault(error, []).append(f"{who} ({where})" if where else who)

    if failures is not None and failures.height and "sae" in failures.columns:
        for r in failures.to_dicts():
            add(str(r["sae"]), str(r.get("stage") or ""), first_line(r.get("error", "")) or "unknown error")
    if "status" in leaderboard.columns:
        for r in leaderboard.filter(pl.col("status").is_not_null() & (pl.col("status") != "ok")).to_dicts():
            reason = first_line(r["status"]).removeprefix("failed:").strip() or "failed"
            add(str(r["sae"]), f"on {r.get('task')}", reason)
    return [f"- {md_escape(_names(who))}: {md_escape(err)}" for err, who in groups.items()]


def above_one_lines(leaderboard: pl.DataFrame, verdicts: pl.DataFrame | None = None) -> list[str]:
    """For each metric of `ABOVE_ONE` with a figure above 1 (leaderboard means, or the ground truth's sufficiency in
    `verdicts`): the largest, whose it is, and why a ratio can exceed 1. Empty when every figure is <= 1."""
    lines = []
    for metric, why in ABOVE_ONE.items():
        best: tuple[float, str] | None = None
        if metric in leaderboard.columns and leaderboard.height:
            for r in leaderboard.select("sae", "task", metric).to_dicts():
                v = num(r[metric])
                if not math.isnan(v) and v > 1 and (best is None or v > best[0]):
                    best = (v, f"{r['sae']} on {r['task']}")
        if verdicts is not None and metric in verdicts.columns and verdicts.height:
            for r in verdicts.select("task", "attribute", metric).to_dicts():
                v = num(r[metric])
                if not math.isnan(v) and v > 1 and (best is None or v > best[0]):
                    best = (v, f"the ground truth of {r['attribute']} on {r['task']}")
        if best is not None:
            lines.append(f"- {metric} (up to {best[0]:.3f}, {md_escape(best[1])}): {why}.")
    return lines
