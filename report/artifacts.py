"""What an evaluation publishes to the Prefect UI, built here and created by the evaluate flow's report task:
the leaderboard's rows for a table artifact (rounded as the markdown report rounds), the artifact keys (one per run,
plus a stable "latest" key per artifact), and the run's plots as a markdown artifact.

The Prefect UI (3.x, both its v1 and v2 pages) renders a markdown artifact's `![name](data:image/png;base64,...)`
inline (checked in headless Chromium), so the plots travel inside the artifact: the UI shows them without access to
the data root.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import polars as pl

from report.tables import RANK_COLUMNS, rounded, short_sae, task_names, task_rows

# the table artifact's columns, in order (leaderboard column -> artifact column): per task its ranking, as the report's
# first table (the summary and its parts, under the report's headers; the other metrics are in the summary artifact
# and the run's parquet). Narrow enough for the Prefect UI's table box at 1600 px (1044 px, checked in Chromium by
# tests/acceptance/test_ui_browser.py): no `kind` (a control is named `control:...`, has no rank and the mapping
# `control`), and the status as ok / failed (the error is in the summary artifact's failures).
ARTIFACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("task", "task"), ("rank", "rank"), ("sae", "sae"), ("mapping", "mapping"), *RANK_COLUMNS, ("status", "status"))
TEXT_COLUMNS = ("task", "mapping")
# artifact -> its stable key, which always holds the latest run's; a run's own key is `<stable>-run-<run>`
LATEST_KEYS = {"leaderboard": "sae-leaderboard", "summary": "sae-evaluation-summary", "plots": "sae-evaluation-plots"}
MAX_RUN_SLUG = 48  # longer run names are cut (and hashed, so two runs never share a key)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_EMBEDDED_BYTES = 8 << 20  # PNG bytes embedded in one artifact; beyond it a plot is listed by name, not shown


def leaderboard_rows(board: pl.DataFrame) -> list[dict[str, Any]]:
    """The leaderboard as table-artifact rows: task by task, each in the report's rank order (trained SAEs ranked by
    summary, the controls after them without a rank), `ARTIFACT_COLUMNS` in order, short SAE names, figures rounded to
    3 decimals (as in the markdown report), n as an integer; a missing column, null or NaN is None (an empty cell)."""
    missing = [c for c in ("sae", "task") if c not in board.columns]
    if missing:
        raise ValueError(f"the leaderboard lacks {', '.join(missing)}: pass the table "
                         f"sage_core.scoring.leaderboard.leaderboard builds")
    rows = []
    for task in task_names(board):
        rank = 0
        for r in task_rows(board, task):
            control = r.get("kind") in ("oracle", "random")
            rank += not control
            out: dict[str, Any] = {}
            for col, name in ARTIFACT_COLUMNS:
                v = r.get(col)
                if col == "rank":
                    out[name] = None if control else rank
                elif col == "sae":
                    out[name] = short_sae(str(v))
                elif col in TEXT_COLUMNS:
                    out[name] = None if v is None else str(v)
                elif col == "status":
                    out[name] = None if v is None else "ok" if str(v) == "ok" else "failed"
                elif col == "n_sections":
                    out[name] = None if rounded(v) is None else int(v)
                else:
                    out[name] = rounded(v)
            rows.append(out)
    return rows


def _run_slug(run: str) -> str:
    """The run name as lowercase letters, digits and single dashes; when that changed it (or cut it), `--` and a
    hash of the name follow, so two names never share a slug (an unchanged slug never holds `--`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", run.lower()).strip("-")
    cut = slug[:MAX_RUN_SLUG].rstrip("-")
    if cut == run:
        return cut
    return f"{cut}--{hashlib.sha256(run.encode()).hexdigest()[:10]}"


def artifact_key(run: str, what: str) -> str:
    """The key of run `run`'s artifact `what` (one of `LATEST_KEYS`): `<latest key>-run-<slug of run>`. Prefect keys
    allow only lowercase letters, digits and dashes; never equal to a latest key nor to another run's key."""
    if what not in LATEST_KEYS:
        raise ValueError(f"unknown artifact {what!r}: use one of {', '.join(LATEST_KEYS)}")
    if not isinstance(run, str) or not run:
        raise ValueError("artifact_key needs the run's name (a non-empty string)")
    return f"{LATEST_KEYS[what]}-run-{_run_slug(run)}"


def latest_key(what: str) -> str:
    """The stable key of artifact `what`: the latest run's copy (a run also publishes under `artifact_key`)."""
    if what not in LATEST_KEYS:
        raise ValueError(f"unknown artifact {what!r}: use one of {', '.join(LATEST_KEYS)}")
    return LATEST_KEYS[what]


def _alt(name: str) -> str:
    return re.sub(r"[\[\]\\\n]", "_", name.rsplit("/", 1)[-1].removesuffix(".png"))


def plots_markdown(plots: dict[str, bytes], where: str | None = None) -> str:
    """A markdown artifact showing the run's plots (name -> PNG bytes, as `storage.reports.report_plots` returns):
    each under its name, embedded as a data URI, with its path in the report directory (`where`, when given). Past
    `MAX_EMBEDDED_BYTES` in all, a plot is listed with its path instead of shown."""
    lines = ["# SAGE plots", ""]
    if where:
        lines += [f"Files under `{where}`.", ""]
    if not plots:
        return "\n".join([*lines, "No plots in this report."]) + "\n"
    budget = MAX_EMBEDDED_BYTES
    for name, data in plots.items():
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"plot {name!r} is not a PNG; pass the bytes storage.reports.report_plots returns")
        lines += [f"## {_alt(name)}", ""]
        if len(data) <= budget:
            budget -= len(data)
            lines += [f"![{_alt(name)}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})", ""]
        else:
            lines += ["Too large to show here with the plots above; open the file.", ""]
        lines += [f"`{name}`", ""]
    return "\n".join(lines)
