"""Report figures and text (built in memory; storage/reports.py writes them).

Inputs are the evaluation's polars tables:
- `scores`: long form, one row per (sae, task, hook, head, role, mapping, metric) with a `value`;
- `leaderboard`: one row per (sae, task) with `kind` ("trained", "oracle", "random"), `summary` and metric means;
- `failures`: (sae, error), possibly empty.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from report.verdicts import BAR_TEXT, verdict_line
from sage_core.scoring.leaderboard import CORE_METRICS, LEADERBOARD_METRICS

# The random-control floor is the report's reading of the leaderboard, kept here: storage.scores (so the scoring
# stages' code version) imports sage_core.scoring.leaderboard, and a note edited here must recompute no score.
LOWER_IS_BETTER = ("l0", "edit_magnitude_k4", "kl", "dead_share")
CLOSER_TO_ONE = ("sufficiency",)  # overshooting the clean logit difference is as far off as falling short
# why the random control is (or is not) a floor for a metric; metrics not named here compare its decoder, with the
# best codes that decoder allows, against the trained SAE's
CONTROL_NOTES = {
    "f1_mean": "its active features are fixed before it sees a prompt, so its F1 is chance: 2p / (1 + p) for a value "
               "of share p (0.667 for a balanced binary attribute); at or below it, no feature tells the value "
               "better than an always-on one",
    "coverage": "share of values with F1 >= 0.6, which chance F1 already reaches for a balanced binary attribute "
                "(0.667): coverage cannot separate SAEs on binary attributes",
    "l0": "set by construction (random_k codes per prompt): a sparsity setting, not a quality comparison",
    "mcc": "decoder directions only",
    # edit accuracy counts the prompts whose prediction the patch leaves alone: where that floor is high, an edit
    # that does little scores high, so the control can match an SAE here and the gain is the comparison to read
    "edit_accuracy_k1": "agreement with the ground-truth patch includes the no-intervention floor (prompts the patch "
                        "does not change): where the floor is high a small edit scores high; compare edit_gain_k4",
    "edit_accuracy_k4": "agreement with the ground-truth patch includes the no-intervention floor (prompts the patch "
                        "does not change): where the floor is high a small edit scores high; compare edit_gain_k4",
    "edit_magnitude_k4": "weight an edit removes relative to the supervised edit's share (0): an edit that removes "
                         "little is small whether or not it follows the patch; read it beside edit_gain_k4",
}
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


KIND_COLOURS = {"trained": "#4c72b0", "oracle": "#55a868", "random": "#c44e52"}
OTHER_COLOUR = "#8c8c8c"
MISSING = "–"

# (leaderboard column, table header) in table order.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("summary", "summary"),
    ("explained_variance", "EV"),
    ("sufficiency", "suff."),
    ("necessity", "nec."),
    ("edit_accuracy_k4", "edit@4"),
    ("f1_mean", "F1"),
    ("mcc", "MCC"),
    ("ce_loss_recovered", "CE rec."),
    ("l0", "L0"),
)
HEADERS = ("rank", "SAE", "kind", "mapping") + tuple(h for _, h in TABLE_COLUMNS)
F1_PREFIX = "f1:"
ANNOTATE_MAX_CELLS = 200


# ----------------------------------------------------------------------------------------------------------- helpers
def _num(v: Any) -> float:
    """A float, NaN for null / non-numeric."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _fmt(v: Any) -> str:
    x = _num(v)
    return MISSING if math.isnan(x) else f"{x:.3f}"


def _tasks(leaderboard: pl.DataFrame) -> list[str]:
    if leaderboard.height == 0 or "task" not in leaderboard.columns:
        return []
    return leaderboard.get_column("task").unique(maintain_order=True).to_list()


def _task_rows(leaderboard: pl.DataFrame, task: str) -> list[dict[str, Any]]:
    """The task's rows, sorted by summary descending (missing summaries last, then by name)."""
    def key(r: dict[str, Any]) -> tuple[bool, float, str]:
        v = _num(r.get("summary"))
        return math.isnan(v), 0.0 if math.isnan(v) else -v, str(r.get("sae"))

    return sorted(leaderboard.filter(pl.col("task") == task).to_dicts(), key=key)


def ranked_saes(leaderboard: pl.DataFrame, task: str) -> list[str]:
    """The task's SAEs, best summary first (the order of the report's tables and heatmap rows)."""
    return [str(r["sae"]) for r in _task_rows(leaderboard, task)]


def _table_cells(leaderboard: pl.DataFrame, task: str) -> list[list[str]]:
    out = []
    for i, r in enumerate(_task_rows(leaderboard, task), start=1):
        cells = [str(i), str(r.get("sae")), str(r.get("kind") or MISSING), str(r.get("mapping") or MISSING)]
        cells += [_fmt(r.get(col)) for col, _ in TABLE_COLUMNS]
        out.append(cells)
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _first_line(s: Any) -> str:
    text = str(s).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------------------------------------- figures
def metric_panels(leaderboard: pl.DataFrame, task: str, metrics: tuple[str, ...] | list[str]) -> Figure:
    """One task's leaderboard metrics as side-by-side bar panels sharing one SAE axis (best summary at the top).

    One figure instead of one per metric: the SAE names are laid out once, and a reader compares an SAE across
    metrics along one row. Controls are coloured apart; a missing value is marked "n/a" at zero.
    """
    rows = _task_rows(leaderboard, task)[::-1]  # barh draws index 0 at the bottom
    metrics = [m for m in metrics if m in leaderboard.columns] or ["summary"]
    names = [str(r["sae"]) for r in rows]
    n = max(len(rows), 1)
    # Fixed margins from the longest name: constrained layout measured every text and cost ~0.25 s per figure.
    left_in = 0.5 + 0.062 * max((len(s) for s in names), default=4)
    panel_in, height = 1.9, 0.24 * n + 1.3
    width = left_in + panel_in * len(metrics) + 0.3
    # Not sharey: only the first panel carries y ticks (the others' tick artists cost ~40% of the drawing).
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    fig.subplots_adjust(left=left_in / width, right=1 - 0.3 / width, bottom=0.75 / height,
                        top=1 - 0.55 / height, wspace=0.12)
    ys = np.arange(len(rows))
    colours = [KIND_COLOURS.get(str(r.get("kind") or ""), OTHER_COLOUR) for r in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = np.array([_num(r.get(metric)) for r in rows], dtype=float)
        finite = vals[~np.isnan(vals)]
        ax.barh(ys, np.nan_to_num(vals, nan=0.0), color=colours, height=0.75)
        for y in ys[np.isnan(vals)]:
            ax.text(0, y, " n/a", va="center", ha="left", fontsize=6, color=OTHER_COLOUR, style="italic")
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        hi = max(1.0 if finite.size and finite.max() > 0.5 else 0.0, float(finite.max()) if finite.size else 1.0)
        span = (hi - lo) or 1.0
        ax.set_xlim(lo - 0.05 * span, hi + 0.05 * span)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(metric, fontsize=9)
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


def f1_heatmap(scores: pl.DataFrame, task: str, saes: list[str] | None = None) -> Figure:
    """Rows = SAEs, columns = attribute values; cell = the SAE's best F1 for that value over its cross-sections."""
    rows, columns, mat = f1_matrix(scores, task, saes)
    nr, nc = max(len(rows), 1), max(len(columns), 1)
    # Fixed margins sized from the longest labels (constrained layout cost ~1 s per heatmap).
    left_in = 0.4 + 0.062 * max((len(s) for s in rows), default=4)
    bottom_in = 0.4 + 0.055 * max((len(v) for _, v in columns), default=4)
    width = min(left_in + 0.36 * nc + 1.4, 40)
    height = bottom_in + 0.24 * nr + 0.9
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left_in / width, bottom_in / height, 1 - (left_in + 1.3) / width,
                       1 - (bottom_in + 0.8) / height))
    if not rows or not columns:
        ax.text(0.5, 0.5, "no per-value F1 scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{task}: best F1 per attribute value")
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
    fig.colorbar(im, cax=cax, label="best F1 (max over cross-sections)")
    ax.set_title(f"{task}: best F1 per attribute value", pad=18)
    return fig


# ------------------------------------------------------------------------------------------------------------ text
def _matched_verdict(rows: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """oracle > SAE > random, each SAE against the controls' summaries over the same cross-sections."""
    trained = [r for r in rows if r.get("kind") == "trained" and not math.isnan(_num(r.get("summary")))
               and not math.isnan(_num(r.get("oracle_same"))) and not math.isnan(_num(r.get("random_same")))]
    if not trained:
        return None, "not checked: no trained SAE with a summary and matched controls"
    above = [f"{r['sae']} ({_num(r['summary']):.3f} vs oracle {_num(r['oracle_same']):.3f})" for r in trained
             if _num(r["summary"]) >= _num(r["oracle_same"])]
    below = [f"{r['sae']} ({_num(r['summary']):.3f} vs random {_num(r['random_same']):.3f})" for r in trained
             if _num(r["summary"]) <= _num(r["random_same"])]
    n_ok = len(trained) - len({s.split(" (")[0] for s in above + below})
    if above or below:
        parts = ([f"at or above the oracle: {', '.join(above)}"] if above else []) + \
                ([f"at or below random: {', '.join(below)}"] if below else [])
        return False, (f"oracle > SAE > random (same cross-sections) holds for {n_ok} of {len(trained)} trained SAEs; "
                       + "; ".join(parts))
    margin_o = min(_num(r["oracle_same"]) - _num(r["summary"]) for r in trained)
    margin_r = min(_num(r["summary"]) - _num(r["random_same"]) for r in trained)
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
        by_kind.setdefault(str(r.get("kind")), []).append((str(r["sae"]), _num(r.get("summary"))))
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


def _failed_entries(leaderboard: pl.DataFrame, failures: pl.DataFrame) -> list[str]:
    entries: list[str] = []
    seen: set[tuple[str, str]] = set()
    if failures is not None and failures.height and "sae" in failures.columns:
        for r in failures.to_dicts():
            key = (str(r["sae"]), _first_line(r.get("error", "")))
            if key not in seen:
                seen.add(key)
                entries.append(f"`{key[0]}`: {key[1] or 'unknown error'}")
    if "status" in leaderboard.columns:
        for r in leaderboard.filter(pl.col("status").is_not_null() & (pl.col("status") != "ok")).to_dicts():
            reason = _first_line(r["status"]).removeprefix("failed:").strip()
            key = (str(r["sae"]), reason)
            if key not in seen:
                seen.add(key)
                entries.append(f"`{key[0]}` on {r.get('task')}: {reason or 'failed'}")
    return entries


def _random_floor_lines(leaderboard: pl.DataFrame, task: str) -> list[str]:
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
    lines += [f"| {r['metric']} | {r['better']} | {_fmt(r['random'])} | {r['n_better']} of {r['n_trained']} | "
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


def summary_markdown(leaderboard: pl.DataFrame, failures: pl.DataFrame, meta: dict,
                     plots: dict[str, list[str]] | None = None, verdicts: pl.DataFrame | None = None) -> str:
    """The run's markdown report: meta paragraph, per-task leaderboard + controls verdict (+ the ground truth's
    verdict per attribute), failed SAEs.

    `plots` maps a task to relative image paths to embed under its table (the writer knows where they are).
    `verdicts`: rows of `sage_core.results.ground_truth_verdicts`.
    """
    tasks = _tasks(leaderboard)
    lines = [f"# SAGE report: {meta.get('run', 'run')}", ""]
    n_saes = meta.get("n_saes", leaderboard.get_column("sae").n_unique() if "sae" in leaderboard.columns else 0)
    meta_tasks = meta.get("tasks", tasks)
    if isinstance(meta_tasks, list | tuple):
        meta_tasks = ", ".join(str(t) for t in meta_tasks)
    parts = [f"**Model:** {meta.get('model', MISSING)}", f"**Tasks:** {meta_tasks or MISSING}",
             f"**SAEs:** {n_saes}", f"**Created:** {meta.get('created', MISSING)}"]
    lines += [". ".join(parts) + ".", ""]
    lines += ["Columns are means over each SAE's cross-sections (CE rec. and L0 on background text); "
              f"`{MISSING}` = not measured. Sorted by summary score.", ""]
    if "mapping" in leaderboard.columns and (leaderboard["mapping"] == "projection").any():
        lines += ["`projection` rows map a pair of residual SAEs onto a sub-layer as P_c(SAE(after) - SAE(before)). "
                  "Where P_c is the identity (the sub-layer's stacked W_O or W_out has full rank, so it writes the "
                  "whole residual stream) `difference` is the same map: such a pair is scored once, as "
                  "`projection`, which also reaches the attention heads.", ""]
    for task in tasks:
        lines += [f"## {task}", ""]
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join("---:" if i == 0 or i >= 4 else "---" for i in range(len(HEADERS))) + "|")
        for cells in _table_cells(leaderboard, task):
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        holds, text = controls_verdict(leaderboard, task)
        mark = {True: "✅", False: "❌", None: "⚠️"}[holds]
        lines += ["", f"**Controls:** {mark} {text}", ""]
        lines += _random_floor_lines(leaderboard, task)
        gt = [] if verdicts is None else [r for r in verdicts.iter_rows(named=True) if r["task"] == task]
        if gt:
            lines += [f"**Ground truth** ({BAR_TEXT}):", ""]
            lines += [f"- {_md_escape(verdict_line(r))}" for r in gt] + [""]
        for p in (plots or {}).get(task, []):
            name = p.rsplit("/", 1)[-1].removesuffix(".png")
            lines.append(f"![{name}]({p})")
        if (plots or {}).get(task):
            lines.append("")
    if not tasks:
        lines += ["No leaderboard rows.", ""]
    lines += ["## Failed SAEs", ""]
    entries = _failed_entries(leaderboard, failures)
    lines += [f"- {_md_escape(e)}" for e in entries] if entries else ["none"]
    return "\n".join(lines) + "\n"


def _text_row(values: list[str] | tuple[str, ...], widths: list[int]) -> str:
    """Names (SAE, kind, mapping) left-aligned, numbers right-aligned."""
    return "  ".join(v.ljust(w) if i in (1, 2, 3) else v.rjust(w)
                     for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()


def leaderboard_text(leaderboard: pl.DataFrame, task: str | None = None) -> str:
    """The leaderboard table(s) as plain aligned text for a terminal; all tasks when `task` is None."""
    blocks = []
    for t in ([task] if task is not None else _tasks(leaderboard)):
        cells = _table_cells(leaderboard, t)
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(HEADERS)]

        body = [_text_row(HEADERS, widths), "  ".join("-" * w for w in widths)] + [_text_row(c, widths) for c in cells]
        blocks.append(f"{t}\n" + "\n".join(body) + f"\ncontrols: {controls_verdict(leaderboard, t)[1]}")
    return "\n\n".join(blocks) + ("\n" if blocks else "")
