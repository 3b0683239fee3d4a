"""The report's figures (matplotlib `Figure`s built in memory, never through pyplot: no backend, nothing global to
close; storage/reports.py saves them): per task, the leaderboard's metrics as bar panels and the best F1 per attribute
value as a heatmap. The location search's AtP heatmaps are in report.atp (re-exported here until tasks/locate.py
imports them from there)."""

from __future__ import annotations

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from report.tables import num, task_rows
from sage_core.scoring import definitions as defs

KIND_COLOURS = {"trained": "#4c72b0", "oracle": "#55a868", "random": "#c44e52"}
OTHER_COLOUR = "#8c8c8c"
F1_PREFIX = "f1:"
ANNOTATE_MAX_CELLS = 200
HEATMAP_COLUMNS = 32  # attribute values per heatmap: wider ones are cut into parts (a 3000 px image shrinks unread)
# SAE rows per figure: a task with more SAEs gets one figure per page, each legible and of bounded size (one figure
# of every row grew the report process by ~1.6 MiB per SAE, and Agg refuses images over 2^16 px)
PAGE_ROWS = 40


def pages(n: int, per: int = PAGE_ROWS) -> list[slice]:
    """The row slices of `n` rows cut into pages of at most `per` (one empty page for none)."""
    return [slice(i, i + per) for i in range(0, n, per)] or [slice(0, 0)]


def metric_panels(leaderboard: pl.DataFrame, task: str, metrics: tuple[str, ...] | list[str],
                  page: slice = slice(None)) -> Figure:
    """One task's leaderboard metrics as side-by-side bar panels sharing one SAE axis (best summary at the top).

    One figure instead of one per metric: the SAE names are laid out once, and a reader compares an SAE across
    metrics along one row. Controls are coloured apart; a missing value is marked "n/a" at zero. `page`: which of the
    ranked rows (`pages`).
    """
    rows = task_rows(leaderboard, task)[page][::-1]  # barh draws index 0 at the bottom
    metrics = [m for m in metrics if m in leaderboard.columns] or ["summary"]
    names = [str(r["sae"]) for r in rows]
    n = max(len(rows), 1)
    # Fixed margins from the longest name: constrained layout measured every text and cost ~0.25 s per figure.
    left_in = 0.5 + 0.062 * max((len(s) for s in names), default=4)
    panel_in, height = 1.9, 0.24 * n + 1.6
    width = left_in + panel_in * len(metrics) + 0.3
    # Not sharey: only the first panel carries y ticks (the others' tick artists cost ~40% of the drawing).
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    fig.subplots_adjust(left=left_in / width, right=1 - 0.3 / width, bottom=0.75 / height,
                        top=1 - 0.85 / height, wspace=0.12)  # room for a two-line title (an unbounded range)
    ys = np.arange(len(rows))
    colours = [KIND_COLOURS.get(str(r.get("kind") or ""), OTHER_COLOUR) for r in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = np.array([num(r.get(metric)) for r in rows], dtype=float)
        lo_clip, hi_clip = robust_limits(vals, metric)
        shown = np.clip(np.nan_to_num(vals, nan=0.0), lo_clip, hi_clip)
        ax.barh(ys, shown, color=colours, height=0.75)
        for y in ys[np.isnan(vals)]:
            ax.text(0, y, " n/a", va="center", ha="left", fontsize=6, color=OTHER_COLOUR, style="italic")
        finite = shown[~np.isnan(vals)]
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        hi = max(1.0 if finite.size and finite.max() > 0.5 else 0.0, float(finite.max()) if finite.size else 1.0)
        span = (hi - lo) or 1.0
        ax.set_xlim(lo - 0.05 * span, hi + 0.05 * span)
        # a value beyond the axis is drawn to its edge and written out, so one outlier does not flatten every bar
        for y, v in zip(ys, vals, strict=True):
            if not np.isnan(v) and (v < lo_clip or v > hi_clip):
                edge = lo_clip if v < lo_clip else hi_clip
                ax.text(edge, y, f"{'◀' if v < lo_clip else ''}{v:.4g}{'▶' if v > hi_clip else ''}", va="center",
                        ha="left" if v < lo_clip else "right", fontsize=6, color="white", fontweight="bold")
        ax.axvline(0, color="black", linewidth=0.6)
        ax.grid(axis="x", alpha=0.3)
        clipped = bool(np.any((vals < lo_clip) | (vals > hi_clip)))
        ax.set_title(_panel_title(metric, clipped), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_yticks([])
    axes[0][0].set_yticks(ys, names, fontsize=7)
    kinds = [k for k in KIND_COLOURS if any(r.get("kind") == k for r in rows)]
    if kinds:
        fig.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in kinds], loc="lower center",
                   ncol=len(kinds), fontsize=8, frameon=False)
    if not rows:
        axes[0][0].text(0.5, 0.5, "no SAEs for this task", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.suptitle(f"{task}: leaderboard metrics (means over each SAE's cross-sections)", fontsize=10)
    return fig


def robust_limits(vals: np.ndarray, metric: str) -> tuple[float, float]:
    """The axis range of a metric's panel: a metric defined as bounded (sage_core.scoring.definitions) shows every
    value; an unbounded side is cut at 3 interquartile ranges beyond the quartiles (at least 0.25 wide), so a
    necessity of -663 is marked at the edge instead of squeezing every other bar to nothing."""
    m = defs.METRICS.get(metric)
    finite = vals[np.isfinite(vals)]
    if m is None or m.bounded or finite.size < 4:
        return -np.inf, np.inf
    q1, q3 = np.percentile(finite, [25, 75])
    reach = 3 * max(q3 - q1, 0.25)
    lo = -np.inf if m.low is not None else min(q1 - reach, 0.0)
    hi = np.inf if m.high is not None else max(q3 + reach, 1.0)
    return float(lo), float(hi)


def _panel_title(metric: str, clipped: bool) -> str:
    m = defs.METRICS.get(metric)
    if m is None or m.bounded:
        return metric
    return f"{metric}\nrange {m.range_text()}" + ("; axis cut" if clipped else "")


def _parse_f1(metric: str) -> tuple[str, str]:
    body = metric[len(F1_PREFIX):]
    attr, _, value = body.partition("=")
    return attr, value


def f1_matrix(scores: pl.DataFrame, task: str, saes: list[str] | None = None
              ) -> tuple[list[str], list[tuple[str, str]], np.ndarray]:
    """Best per-value F1 of each SAE over its cross-sections: (saes, [(attribute, value)], matrix [sae, column]).

    Columns are grouped by attribute (attributes in order of first appearance, values sorted within); missing or
    NaN-only cells are NaN. `saes` fixes the row order (and subset); by default, order of first appearance.
    """
    f1 = scores.filter((pl.col("task") == task) & pl.col("metric").str.starts_with(F1_PREFIX))
    f1 = f1.with_columns(pl.col("value").cast(pl.Float64).fill_nan(None))
    best = f1.group_by("sae", "metric", maintain_order=True).agg(pl.col("value").max())
    rows = saes if saes is not None else f1.get_column("sae").unique(maintain_order=True).to_list()
    attrs: dict[str, list[str]] = {}
    for m in f1.get_column("metric").unique(maintain_order=True).to_list():
        a, v = _parse_f1(m)
        attrs.setdefault(a, [])
        if v not in attrs[a]:
            attrs[a].append(v)
    columns = [(a, v) for a, vs in attrs.items() for v in sorted(vs)]
    col_index = {f"{F1_PREFIX}{a}={v}": j for j, (a, v) in enumerate(columns)}
    row_index = {s: i for i, s in enumerate(rows)}
    mat = np.full((len(rows), len(columns)), np.nan)
    for sae, metric, value in best.iter_rows():
        i, j = row_index.get(sae), col_index.get(metric)
        if i is not None and j is not None and value is not None:
            mat[i, j] = value
    return list(rows), columns, mat


def heatmap_parts(scores: pl.DataFrame, task: str, max_columns: int = HEATMAP_COLUMNS) -> list[list[tuple[str, str]]]:
    """The task's F1 columns cut into legible heatmaps: attributes whole and together while they fit `max_columns`
    columns, an attribute with more values cut into even parts of at most that many."""
    _, columns, _ = f1_matrix(scores, task, [])
    attrs: dict[str, list[tuple[str, str]]] = {}
    for c in columns:
        attrs.setdefault(c[0], []).append(c)
    parts: list[list[tuple[str, str]]] = []
    cut: set[int] = set()  # parts holding a piece of a cut attribute: nothing joins them
    for cols in attrs.values():
        if len(cols) > max_columns:
            k = -(-len(cols) // max_columns)
            size = -(-len(cols) // k)
            cut.update(range(len(parts), len(parts) + k))
            parts += [cols[i:i + size] for i in range(0, len(cols), size)]
        elif parts and len(parts) - 1 not in cut and len(parts[-1]) + len(cols) <= max_columns:
            parts[-1] = parts[-1] + cols
        else:
            parts.append(list(cols))
    return parts or [[]]


def f1_heatmap(scores: pl.DataFrame, task: str, saes: list[str] | None = None,
               columns: list[tuple[str, str]] | None = None, part: str = "") -> Figure:
    """Rows = SAEs, columns = attribute values; cell = the SAE's best F1 for that value over its cross-sections.
    `columns`: only these (one of `heatmap_parts`), `part` naming it in the title."""
    rows, all_columns, full = f1_matrix(scores, task, saes)
    keep = [j for j, c in enumerate(all_columns) if columns is None or c in columns]
    columns, mat = [all_columns[j] for j in keep], full[:, keep]
    nr, nc = max(len(rows), 1), max(len(columns), 1)
    # Fixed margins sized from the longest labels (constrained layout cost ~1 s per heatmap).
    left_in = 0.4 + 0.062 * max((len(s) for s in rows), default=4)
    bottom_in = 0.4 + 0.055 * max((len(v) for _, v in columns), default=4)
    width = min(left_in + 0.36 * nc + 1.4, 40)
    height = max(bottom_in + 0.24 * nr + 0.9, 2.4)
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left_in / width, bottom_in / height, 1 - (left_in + 1.3) / width,
                       1 - (bottom_in + 0.8) / height))
    if not rows or not columns:
        ax.text(0.5, 0.5, "no per-value F1 scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{task}: best F1 per attribute value{part}")
        return fig
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(columns)), [v for _, v in columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8 if len(rows) <= 30 else 7)
    # Attribute groups: separators and a label above each group.
    start = 0
    for j in range(1, len(columns) + 1):
        if j == len(columns) or columns[j][0] != columns[start][0]:
            if j < len(columns):
                ax.axvline(j - 0.5, color="white", linewidth=2)
            ax.text((start + j - 1) / 2, -0.7, columns[start][0], ha="center", va="bottom", fontsize=8,
                    fontweight="bold", clip_on=False)
            start = j
    if mat.size < ANNOTATE_MAX_CELLS:
        for (i, j), v in np.ndenumerate(mat):
            text = "–" if np.isnan(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if np.isnan(v) or v > 0.6 else "white")
    cax = fig.add_axes((1 - 1.1 / width, bottom_in / height, 0.15 / width, 1 - (bottom_in + 0.8) / height))
    fig.colorbar(im, cax=cax, label="best F1")  # a short label: a few SAEs make a short figure
    ax.set_title(f"{task}: best F1 per attribute value (max over cross-sections){part}", pad=18)
    return fig
