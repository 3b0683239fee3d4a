"""The "new this run" markdown a watch run publishes: what it evaluated and where each SAE ranks among every SAE ever
evaluated for its model (per task), what failed or was skipped and why, and what it left alone."""

from __future__ import annotations

from typing import Any

import polars as pl

WATCH_ARTIFACT_KEY = "sage-watch-new-this-run"


def _cell(value: Any) -> str:
    text = "" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in r) + " |" for r in rows), ""]


def _name(o: dict[str, Any]) -> str:
    return o["sae"] or o["spec"]


def watch_markdown(summary: dict[str, Any], ranks: pl.DataFrame, when: str) -> str:
    """`summary`: the watch flow's summary (outcomes, not_new, counts, ...); `ranks`: `across.ranks_of` rows of the
    evaluated SAEs (content_hash, model, task, rank, n_ranked, summary, run)."""
    c = summary["counts"]
    title = "SAEs new this run" + (" (dry run: nothing evaluated)" if summary["dry_run"] else "")
    lines = [f"# {title}", "", f"watch run of {when}; sources: " + ", ".join(f"`{s}`" for s in summary["sources"]),
             "", f"{summary['listed']} SAE(s) listed, {summary['new']} new: **{c['evaluated']} evaluated, "
                 f"{c['failed']} failed, {c['skipped']} skipped**; left alone: {c['unchanged']} unchanged, "
                 f"{c['same-weights']} with weights already scored, {c['busy']} claimed by another watch run, "
                 f"{c['deferred']} deferred to the next run.", ""]
    evaluated = [o for o in summary["outcomes"] if o["status"] == "evaluated"]
    if evaluated:
        lines += ["## Evaluated, and their rank among every SAE of the model scored against the same ground truth", ""]
        by_hash = {h: [r for r in ranks.to_dicts() if r["content_hash"] == h]
                   for h in {o["content_hash"] for o in evaluated}}
        rows = []
        for o in evaluated:
            for r in sorted(by_hash.get(o["content_hash"], []), key=lambda r: r["task"] or ""):
                rank = f"{r['rank']} of {r['n_ranked']}" if r.get("rank") is not None else "unranked"
                rows.append([_name(o), o["model"], o["hook"], r["task"], rank, r.get("summary"), o["run"],
                             r.get("ground_truth")])
            if not by_hash.get(o["content_hash"]):
                rows.append([_name(o), o["model"], o["hook"], "", "not on the leaderboard", None, o["run"], None])
        lines += _table(["SAE", "model", "hook", "task", "rank", "summary", "run", "ground truth"], rows)
    for status, heading in (("failed", "Failed"), ("skipped", "Skipped")):
        these = [o for o in summary["outcomes"] if o["status"] == status]
        if these:
            lines += [f"## {heading}", ""]
            lines += _table(["SAE", "model", "source", "reason"],
                            [[_name(o), o["model"], o["source"], o["reason"]] for o in these])
    if summary["dry_run"] and summary["not_new"]:
        lines += ["## What a run would do", ""]
        lines += _table(["SAE", "model", "would", "why"],
                        [[o["spec"], o["model"], o["status"], o["reason"]] for o in summary["not_new"]])
    if summary["unreadable"] or summary["source_errors"]:
        lines += ["## Not read", ""]
        lines += _table(["source", "entry", "reason"],
                        [[u["source"], u["path"], u["reason"]] for u in summary["unreadable"]]
                        + [[e["source"], "(the whole source)", e["error"]] for e in summary["source_errors"]])
    return "\n".join(lines)
