"""The leaderboard as tables: cell formatting and rounding, the columns every table shows, the rank order and the
markdown table. The markdown report, the terminal text and the Prefect table artifact format numbers here,
so a figure reads the same everywhere (3 decimals).

The leaderboard (`sage_core.scoring.leaderboard`) has one row per (sae, task) with `kind` ("trained", "oracle",
"random"), `summary`, `n_sections` and each metric's mean over the cross-sections the SAE reaches.
"""

from __future__ import annotations

import math
import re
from typing import Any

import polars as pl

from sage_core.scoring import definitions as defs

MISSING = "–"
DECIMALS = 3  # every table's figures: enough to tell SAEs apart, few enough to read

# (leaderboard column, table header). Per task two tables: the ranking (the summary, its parts as the metric
# definitions name them, and `n`, the count of cross-sections the SAE reaches: narrow enough for a 1600 px page), then
# the other metrics defined to be shown in tables (sage_core.scoring.definitions).
RANK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_sections", "n"), ("summary", "summary"),
    *((m.name, m.title) for m in defs.METRICS.values() if m.in_summary))
DETAIL_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (n, defs.get(n).title) for n in defs.names(table=True) if n not in dict(RANK_COLUMNS))
TABLE_COLUMNS = RANK_COLUMNS + DETAIL_COLUMNS  # every column a table shows, ranking first
COUNT_COLUMNS = ("n_sections",)  # integers: shown without decimals
NAME_COLUMNS = 4  # rank, SAE, kind, mapping
HEADERS = ("rank", "SAE", "kind", "mapping") + tuple(h for _, h in RANK_COLUMNS)
DETAIL_HEADERS = ("rank", "SAE") + tuple(h for _, h in DETAIL_COLUMNS)
CONTROL_RANK = "ctrl"  # the controls' rank cell: they are listed after the ranked SAEs, not among them


_UNIT = re.compile(r"^(?P<family>[^:\[]+):(?P<mapping>[a-z]+)\[(?P<before>[^\]]+?)->(?P<after>[^\]]+)\]$")


def short_sae(name: str) -> str:
    """blocks.0.hook_resid_pre--topk-512 -> L0.resid_pre topk-512 (zoo names); a projected pair's unit
    topk-64:projection[L0.resid_mid->L0.resid_post] -> L0.resid_mid→L0.resid_post topk-64 (its mapping is a column of
    every table that shows it); other names unchanged."""
    from sage_core.model.hooks import short_hook

    if m := _UNIT.match(name):
        return f"{m['before']}→{m['after']} {m['family']}"
    if "--" in name:
        hook, rest = name.split("--", 1)
        return f"{short_hook(hook)} {rest}"
    return name


def num(v: Any) -> float:
    """A float, NaN for null / non-numeric."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def rounded(v: Any, decimals: int = DECIMALS) -> float | None:
    """`v` rounded to `decimals` places as a float; None for null, NaN or non-numeric (JSON has no NaN)."""
    x = num(v)
    return None if math.isnan(x) or math.isinf(x) else round(x, decimals) + 0.0  # + 0.0: no "-0.0"


def fmt(v: Any) -> str:
    """A figure as table text: 3 decimals, `MISSING` when not measured."""
    x = num(v)
    return MISSING if math.isnan(x) else f"{round(x, DECIMALS) + 0.0:.{DECIMALS}f}"


def _cell(column: str, v: Any) -> str:
    if column in COUNT_COLUMNS:
        x = num(v)
        return MISSING if math.isnan(x) else str(int(x))
    return fmt(v)


def task_names(leaderboard: pl.DataFrame) -> list[str]:
    """The leaderboard's tasks in order of first appearance."""
    if leaderboard.height == 0 or "task" not in leaderboard.columns:
        return []
    return leaderboard.get_column("task").unique(maintain_order=True).to_list()


def task_rows(leaderboard: pl.DataFrame, task: str) -> list[dict[str, Any]]:
    """The task's rows: the trained SAEs by summary descending (missing summaries last, then by name), then the
    controls (oracle, then random), so no control takes a rank."""
    def key(r: dict[str, Any]) -> tuple[int, bool, float, str]:
        v = num(r.get("summary"))
        control = {"oracle": 1, "random": 2}.get(str(r.get("kind")), 0)
        return control, math.isnan(v), 0.0 if math.isnan(v) else -v, str(r.get("sae"))

    return sorted(leaderboard.filter(pl.col("task") == task).to_dicts(), key=key)


def ranked_saes(leaderboard: pl.DataFrame, task: str) -> list[str]:
    """The task's SAEs, best summary first (the order of the report's tables and heatmap rows)."""
    return [str(r["sae"]) for r in task_rows(leaderboard, task)]


def table_cells(leaderboard: pl.DataFrame, task: str, detail: bool = False) -> list[list[str]]:
    """One row of cells per SAE of the task, in rank order, under `HEADERS` (the ranking) or, with `detail`,
    `DETAIL_HEADERS` (the other metrics). SAE names are short (`short_sae`); controls carry `CONTROL_RANK`."""
    out, rank = [], 0
    for r in task_rows(leaderboard, task):
        control = r.get("kind") in ("oracle", "random")
        rank += not control
        cells = [CONTROL_RANK if control else str(rank), short_sae(str(r.get("sae")))]
        if not detail:
            cells += [str(r.get("kind") or MISSING), str(r.get("mapping") or MISSING)]
        cells += [_cell(col, r.get(col)) for col, _ in (DETAIL_COLUMNS if detail else RANK_COLUMNS)]
        out.append(cells)
    return out


def md_escape(s: str) -> str:
    """Text safe inside a markdown table cell or list item (a pipe would split the cell)."""
    return s.replace("|", "\\|").replace("\n", " ")


def first_line(s: Any) -> str:
    text = str(s).strip()
    return text.splitlines()[0] if text else ""


def markdown_table(leaderboard: pl.DataFrame, task: str) -> list[str]:
    """The task's two tables as markdown lines (names left-aligned, figures right-aligned): the ranking, then the
    other metrics of the same SAEs in the same order."""
    def table(headers: tuple[str, ...], names: int, detail: bool) -> list[str]:
        return ["| " + " | ".join(headers) + " |",
                "|" + "|".join("---:" if i == 0 or i >= names else "---" for i in range(len(headers))) + "|",
                *("| " + " | ".join(md_escape(c) for c in cells) + " |"
                  for cells in table_cells(leaderboard, task, detail))]

    return [*table(HEADERS, NAME_COLUMNS, False), "", "Other metrics (same order):", "",
            *table(DETAIL_HEADERS, 2, True)]
