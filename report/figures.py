"""The report's figures (matplotlib `Figure`s built in memory, never through pyplot: no backend, nothing global to
close; storage/reports.py saves them): per task, the leaderboard's metrics as bar panels and the best F1 per attribute
value as a heatmap. The location search's AtP heatmaps are in report.atp (re-exported here until tasks/locate.py
imports them from there)."""

from __future__ import annotations

import textwrap

import matplotlib
import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from report.tables import num, short_sae, task_rows
from sage_core.scoring import definitions as defs

KIND_COLOURS = {"trained": "#4c72b0", "oracle": "#55a868", "random": "#c44e52"}
OTHER_COLOUR = "#8c8c8c"
F1_PREFIX = "f1:"
ANNOTATE_MAX_CELLS = 200
HEATMAP_COLUMNS = 32  # attribute values per heatmap: wider ones are cut into parts (a 3000 px image shrinks unread)
# SAE rows per figure: a task with more SAEs gets one figure per page, each legible and of bounded size (one figure
# of every row grew the report process by ~1.6 MiB per SAE, and Agg refuses images over 2^16 px)
PAGE_ROWS = 40
# The metrics figure's width: ~1000 px at the report's 110 dpi, so the Prefect UI's ~1046 px box shows it unscaled
FIGURE_WIDTH_IN = 9.0
MIN_PANEL_IN, PANEL_GAP_IN = 1.45, 0.15  # a metric panel's least width (4-5 tick labels of 8 pt) and the gap between
NAME_PT = 8  # SAE names: ~11 px tall at 110 dpi
HEATMAP_COLUMN_IN = 0.36
TITLE_MAX_IN = 8.0  # a heatmap is widened for its title up to this; a longer title is wrapped


class _Measure:
    """Text extents in inches from the font's metrics, without drawing a figure: the margins are sized from them,
    so no label is clipped and no layout engine runs (constrained layout cost ~1 s per heatmap)."""

    def __init__(self) -> None:
        self._renderer = RendererAgg(1, 1, 72)  # 72 dpi: pixels are points

    def width(self, text: str, size: float, weight: str = "normal") -> float:
        prop = FontProperties(size=size, weight=weight)
        w, _, _ = self._renderer.get_text_width_height_descent(text, prop, ismath=False)
        return w / 72

    def wrap(self, text: str, size: float, room: float, weight: str = "normal") -> list[str]:
        """`text` in as few lines as each fit `room` inches (a word longer than that alone on its line)."""
        chars = len(text)
        while chars > 1:
            lines = textwrap.wrap(text, chars) or [""]
            if all(self.width(line, size, weight) <= room for line in lines):
                return lines
            chars -= 1
        return textwrap.wrap(text, 1) or [""]

    def fit(self, text: str, size: float, room: float) -> str:
        """`text`, or its middle cut out ("…") so it fits `room` inches: a label never pushes the plot off."""
        if self.width(text, size) <= room:
            return text
        keep = len(text)
        while keep > 2 and self.width(text[:keep // 2] + "…" + text[len(text) - keep // 2:], size) > room:
            keep -= 2
        return text[:keep // 2] + "…" + text[len(text) - keep // 2:]


def pages(n: int, per: int = PAGE_ROWS) -> list[slice]:
    """The row slices of `n` rows cut into pages of at most `per` (one empty page for none)."""
    return [slice(i, i + per) for i in range(0, n, per)] or [slice(0, 0)]


def metric_panels(leaderboard: pl.DataFrame, task: str, metrics: tuple[str, ...] | list[str],
                  page: slice = slice(None)) -> Figure:
    """One task's leaderboard metrics as bar panels sharing one SAE order (best summary at the top), in rows of as
    many panels as `FIGURE_WIDTH_IN` holds legibly.

    One figure instead of one per metric: a reader compares an SAE across metrics along one row. SAEs are named as
    the tables name them (`short_sae`). Controls are coloured apart; a missing value is marked "n/a" at zero.
    `page`: which of the ranked rows (`pages`).
    """
    rows = task_rows(leaderboard, task)[page][::-1]  # barh draws index 0 at the bottom
    metrics = [m for m in metrics if m in leaderboard.columns] or ["summary"]
    measure = _Measure()
    width = FIGURE_WIDTH_IN
    names = [measure.fit(short_sae(str(r["sae"])), NAME_PT, 0.4 * width) for r in rows]
    # Fixed margins from the measured labels: constrained layout measured every text and cost ~0.25 s per figure.
    left_in = 0.2 + max((measure.width(s, NAME_PT) for s in names), default=0.3)
    free = width - left_in - 0.25
    per_row = max(1, min(len(metrics), int((free + PANEL_GAP_IN) // (MIN_PANEL_IN + PANEL_GAP_IN))))
    n_rows = -(-len(metrics) // per_row)
    per_row = -(-len(metrics) // n_rows)  # balanced rows: 4 + 3, not 5 + 2
    bars_in = 0.26 * max(len(rows), 1)
    head_in, foot_in = 0.5, 0.32  # a two-line panel title (an unbounded range) above, the x ticks below
    title_lines = measure.wrap(f"{task}: leaderboard metrics (means over each SAE's cross-sections)", 10,
                               width - 0.3)
    top_in, bottom_in = 0.15 + 0.19 * len(title_lines), 0.45  # the figure's title; the legend
    height = top_in + n_rows * (head_in + bars_in + foot_in) + bottom_in
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(n_rows, per_row, left=left_in / width, right=1 - 0.25 / width,
                            top=1 - (top_in + head_in) / height, bottom=(bottom_in + foot_in) / height,
                            wspace=PANEL_GAP_IN / ((free - (per_row - 1) * PANEL_GAP_IN) / per_row),
                            hspace=(head_in + foot_in) / bars_in)
    axes = [fig.add_subplot(grid[k // per_row, k % per_row]) for k in range(len(metrics))]
    ys = np.arange(len(rows))
    colours = [KIND_COLOURS.get(str(r.get("kind") or ""), OTHER_COLOUR) for r in rows]
    for k, (ax, metric) in enumerate(zip(axes, metrics, strict=True)):
        vals = np.array([num(r.get(metric)) for r in rows], dtype=float)
        _bars(ax, ys, vals, metric, colours)
        # Not sharey: only each row's first panel carries the names (the others' tick artists cost ~40% of drawing).
        if k % per_row == 0:
            ax.set_yticks(ys, names, fontsize=NAME_PT)
    kinds = [k for k in KIND_COLOURS if any(r.get("kind") == k for r in rows)]
    if kinds:
        fig.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in kinds], loc="lower center",
                   ncol=len(kinds), fontsize=8, frameon=False)
    if not rows:
        axes[0].text(0.5, 0.5, "no SAEs", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle("\n".join(title_lines), y=1 - 0.1 / height, va="top", fontsize=10)
    return fig


def _bars(ax, ys: np.ndarray, vals: np.ndarray, metric: str, colours: list[str]) -> None:
    """One metric's panel: a value beyond the robust range is drawn to the axis edge and written out, so one outlier
    does not flatten every bar."""
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
    for y, v in zip(ys, vals, strict=True):
        if not np.isnan(v) and (v < lo_clip or v > hi_clip):
            edge = lo_clip if v < lo_clip else hi_clip
            ax.text(edge, y, f"{'◀' if v < lo_clip else ''}{v:.4g}{'▶' if v > hi_clip else ''}", va="center",
                    ha="left" if v < lo_clip else "right", fontsize=6, color="white", fontweight="bold")
    ax.axvline(0, color="black", linewidth=0.6)
    ax.grid(axis="x", alpha=0.3)
    clipped = bool(np.any((vals < lo_clip) | (vals > hi_clip)))
    ax.set_title(_panel_title(metric, clipped), fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # a 1.6 in panel holds 5 labels side by side
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylim(-0.6, len(ys) - 0.4)
    ax.set_yticks([])


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
    """Rows = SAEs (named as the tables name them), columns = attribute values; cell = the SAE's best F1 for that
    value over its cross-sections. `columns`: only these (one of `heatmap_parts`), `part` naming it in the title.
    Margins are measured from the labels: nothing is clipped, and no two labels overlap."""
    rows, all_columns, full = f1_matrix(scores, task, saes)
    keep = [j for j, c in enumerate(all_columns) if columns is None or c in columns]
    columns, mat = [all_columns[j] for j in keep], full[:, keep]
    measure = _Measure()
    names = [short_sae(s) for s in rows]
    name_pt = 8 if len(rows) <= 30 else 7
    # cells written out need room for "0.00"; without, a narrower column keeps IOI's 27 values within ~1050 px
    col_in = HEATMAP_COLUMN_IN if mat.size < ANNOTATE_MAX_CELLS else 0.24
    # values across while each fits its column, else upright: rotated ones never overlap, slanted ones' boxes do
    value_in = max((measure.width(v, 7) for _, v in columns), default=0.0)
    upright = value_in > col_in - 0.06
    groups = _groups(columns)
    labels = [_group_label(a, (j - i) * col_in, measure) for a, i, j in groups]
    group_in = max((h for _, h, _ in labels), default=0.0)
    left_in = 0.25 + max((measure.width(s, name_pt) for s in names), default=0.3)
    bottom_in = 0.25 + (value_in if upright else 0.12)
    grid_in, right_in = col_in * max(len(columns), 1), 1.2  # the colour bar and its label
    title = f"{task}: best F1 per attribute value (max over cross-sections){part}"
    width = max(left_in + grid_in + right_in, min(measure.width(title, 10) + 0.4, TITLE_MAX_IN))
    title_lines = measure.wrap(title, 10, width - 0.4)
    top_in = 0.15 + 0.19 * len(title_lines) + 0.1 + group_in + 0.08
    grid_h = max(0.24 * max(len(rows), 1), 1.3)  # the colour bar's six ticks need ~1.3 in
    height = top_in + grid_h + bottom_in
    x0 = left_in + (width - left_in - grid_in - right_in) / 2  # a figure widened for its title centres its grid
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((x0 / width, bottom_in / height, grid_in / width, grid_h / height))
    fig.suptitle("\n".join(title_lines), y=1 - 0.12 / height, va="top", fontsize=10)
    if not rows or not columns:
        ax.set_position((0.05, bottom_in / height, 0.9, grid_h / height))  # the whole width for the note
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no per-value F1 scores", ha="center", va="center", transform=ax.transAxes)
        return fig
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(columns)), [v for _, v in columns], rotation=90 if upright else 0, fontsize=7)
    ax.set_yticks(range(len(rows)), names, fontsize=name_pt)
    # Attribute groups: separators and a label above each group (wrapped, or upright where it cannot fit across).
    for (_, i, j), (text, _, rotation) in zip(groups, labels, strict=True):
        if i:
            ax.axvline(i - 0.5, color="white", linewidth=2)
        ax.annotate(text, ((i + j - 1) / 2, -0.5), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, fontweight="bold", rotation=rotation, linespacing=1.0,
                    annotation_clip=False)
    if mat.size < ANNOTATE_MAX_CELLS:
        for (i, j), v in np.ndenumerate(mat):
            text = "–" if np.isnan(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if np.isnan(v) or v > 0.6 else "white")
    cax = fig.add_axes(((x0 + grid_in + 0.2) / width, bottom_in / height, 0.15 / width, grid_h / height))
    fig.colorbar(im, cax=cax, label="best F1")  # a short label: a few SAEs make a short figure
    cax.tick_params(labelsize=8)
    return fig


def _groups(columns: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """(attribute, first column, end column) of each run of one attribute's columns."""
    out: list[tuple[str, int, int]] = []
    for j, (attr, _) in enumerate(columns):
        if out and out[-1][0] == attr:
            out[-1] = (attr, out[-1][1], j + 1)
        else:
            out.append((attr, j, j + 1))
    return out


def _group_label(attr: str, span_in: float, measure: _Measure) -> tuple[str, float, int]:
    """An attribute's label over its `span_in` inches of columns: (text, height in inches, rotation). Across, cut at
    its underscores onto as many lines as it needs; upright where a piece is still wider than its columns."""
    room = span_in - 0.06
    pieces = [p + "_" for p in attr.split("_")]
    pieces[-1] = pieces[-1][:-1]
    lines: list[str] = []
    for p in pieces:
        if lines and measure.width(lines[-1] + p, 8, "bold") <= room:
            lines[-1] += p
        else:
            lines.append(p)
    if all(measure.width(line, 8, "bold") <= room for line in lines):
        return "\n".join(lines), 0.14 * len(lines) + 0.05, 0
    return attr, measure.width(attr, 8, "bold") + 0.05, 90
