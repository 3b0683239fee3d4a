"""The run's report as text: the markdown report (README.md of the report directory, and the Prefect summary
artifact: the run's meta, per task the leaderboard table, the controls' verdict, the random-control floor and the
ground truth's verdict per attribute, then the notes: figures above 1, SAEs not reached, failures) and the plain
leaderboard text for a terminal. Built in memory from the evaluation's polars tables; storage/reports.py writes it.

`leaderboard_text` is here, not in report.tables, because it ends with the controls' verdict: report.tables stays free
of report.controls (and of sage_core.scoring.leaderboard), so no stage's code version follows the report's wording.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from report.controls import controls_verdict, random_floor_lines
from report.notes import UNREACHED_TEXT, above_one_lines, failure_lines, unreached_lines
from report.tables import (
    HEADERS,
    MISSING,
    NAME_COLUMNS,
    fmt,
    markdown_table,
    md_escape,
    num,
    short_sae,
    table_cells,
    task_names,
    task_rows,
)
from report.verdicts import BAR_TEXT, verdict_line
from sage_core.scoring import definitions as defs

PROJECTION_NOTE = ("`projection` rows map a pair of residual SAEs onto a sub-layer as P_c(SAE(after) - SAE(before)). "
                   "Where P_c is the identity (the sub-layer's stacked W_O or W_out has full rank, so it writes the "
                   "whole residual stream) `difference` is the same map: such a pair is scored once, as "
                   "`projection`, which also reaches the attention heads.")


TABLES_LABEL = "**Tables** (parquet):"
_PLOT_LINE = re.compile(r"!\[[^\]\n]*\]\(plots/[^)\s]+\.png\)")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")


def tables_lines(tables: dict[str, str] | None) -> list[str]:
    """The run's tables (name -> path relative to the report), linked where they are: written once, never copied."""
    if not tables:
        return []
    return [TABLES_LABEL + " " + ", ".join(f"[{what}]({rel})" for what, rel in tables.items()) + ".", ""]


def artifact_summary(readme: str, where: str) -> str:
    """The report's README.md as the Prefect summary artifact, so the markdown is built once: without the plots (the
    plots artifact embeds them; a relative image shows nothing in the UI) and with the tables' full paths under the
    report directory `where` (a relative link leads nowhere there)."""
    lines, out, i = readme.split("\n"), [], 0
    while i < len(lines):
        if _PLOT_LINE.fullmatch(lines[i]):  # a task's plots: its block of images and the blank line closing it
            while i < len(lines) and _PLOT_LINE.fullmatch(lines[i]):
                i += 1
            i += i < len(lines) and lines[i] == ""
            continue
        line = lines[i]
        if line.startswith(TABLES_LABEL):
            line = _LINK.sub(lambda m: f"{m[1]} `{os.path.normpath(os.path.join(where, m[2]))}`", line)
        out.append(line)
        i += 1
    return "\n".join(out)


def corpus_line(about: dict[str, Any]) -> str:
    """The text of the core metrics in words (`sage_core.prompts.corpus_spec.describe`): `hf:NeelNanda/pile-10k:train:
    text (revision 1a2b3c4d5e6f), 131072 tokens in 1024 sequences of 128 tokens (BOS first)`."""
    where = str(about.get("spec", MISSING)) + (f" ({about['content']})" if about.get("content") else "")
    shape = (f"{about.get('sequences')} sequences of {about['length']} tokens (BOS first)" if about.get("length")
             else f"{about.get('sequences')} held-out sentences")
    return f"{where}, {about.get('tokens')} tokens in {shape}"


CORE_COLUMNS = tuple((n, defs.get(n).title) for n in defs.names("core"))  # every core metric, as defined


def core_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    """Every SAE's core metrics on the run's text, as a table: what a run shows where no task ran on the model."""
    if not rows:
        return []
    head = ["SAE", *(h for _, h in CORE_COLUMNS)]
    lines = ["## Core metrics", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: str(r.get("sae"))):
        cells = [md_escape(str(r.get("sae"))), *(fmt(r.get(k)) for k, _ in CORE_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def task_result_line(leaderboard: pl.DataFrame, task: str) -> str:
    """One task's result in one line: its best trained SAE and summary, the controls' summaries and whether they
    bracket the trained SAEs (`ioi: best L0.resid_pre topk-64, summary 0.712; oracle 0.950, random 0.200; controls
    hold`)."""
    rows = task_rows(leaderboard, task)
    trained = [r for r in rows if r.get("kind") == "trained" and not math.isnan(num(r.get("summary")))]
    best = (f"best {short_sae(str(trained[0]['sae']))}, summary {fmt(trained[0]['summary'])}" if trained
            else "no trained SAE with a summary")
    controls = [f"{r['kind']} {fmt(r.get('summary'))}" for r in rows if r.get("kind") in ("oracle", "random")]
    holds, _ = controls_verdict(leaderboard, task)
    verdict = {True: "controls hold", False: "controls do not hold", None: "controls not checked"}[holds]
    return f"{task}: {best}" + (f"; {', '.join(controls)}" if controls else "") + f"; {verdict}"


def task_status_lines(rows: list[dict[str, Any]] | None, model: str | None) -> list[str]:
    """Which tasks ran on the model, and why the others did not (not posed by its tokenizer, not done by the model),
    with what fitting each task's words to the tokenizer dropped."""
    from sage_core.prompts.task_status import TaskStatus

    if not rows:
        return []
    lines = ["**Tasks on this model:**", ""]
    for r in rows:
        s = TaskStatus.model_validate(r)
        vocab = f" Vocabulary: {s.vocabulary}." if s.vocabulary and s.status != "not posed" else ""
        lines.append(f"- {md_escape(s.line(model or MISSING))}.{md_escape(vocab)}")
    return [*lines, ""]


def _meta_lines(leaderboard: pl.DataFrame, meta: dict, tasks: list[str],
                tables: dict[str, str] | None = None) -> list[str]:
    n_saes = meta.get("n_saes", leaderboard.get_column("sae").n_unique() if "sae" in leaderboard.columns else 0)
    meta_tasks = meta.get("tasks", tasks)
    if isinstance(meta_tasks, list | tuple):
        meta_tasks = ", ".join(str(t) for t in meta_tasks)
    parts = [f"**Model:** {meta.get('model', MISSING)}", f"**Tasks:** {meta_tasks or MISSING}",
             f"**SAEs:** {n_saes}", f"**Created:** {meta.get('created', MISSING)}"]
    corpus = [f"**Core metrics on:** {md_escape(corpus_line(meta['corpus']))}.", ""] if meta.get("corpus") else []
    lines = [". ".join(parts) + ".", "", *tables_lines(tables), *corpus,
             *task_status_lines(meta.get("task_status"), meta.get("model")),
             "Per task, the ranking (the summary and its parts), then the other metrics of the same SAEs in the same "
             "order. Figures are means over each SAE's cross-sections (CE rec.: on background text); n = the task's "
             f"cross-sections the SAE reaches; `{MISSING}` = not measured. Trained SAEs are ranked by summary; the "
             "controls follow them (rank `ctrl`).", ""]
    if "mapping" in leaderboard.columns and (leaderboard["mapping"] == "projection").any():
        lines += [PROJECTION_NOTE, ""]
    return lines


def _task_lines(leaderboard: pl.DataFrame, task: str, plots: list[str], verdicts: pl.DataFrame | None) -> list[str]:
    lines = [f"## {task}", "", *markdown_table(leaderboard, task)]
    holds, text = controls_verdict(leaderboard, task)
    mark = {True: "✅", False: "❌", None: "⚠️"}[holds]
    lines += ["", f"**Controls:** {mark} {text}", ""]
    lines += random_floor_lines(leaderboard, task)
    gt = [] if verdicts is None else [r for r in verdicts.iter_rows(named=True) if r["task"] == task]
    if gt:
        lines += [f"**Ground truth** ({BAR_TEXT}):", ""]
        lines += [f"- {md_escape(verdict_line(r))}" for r in gt] + [""]
    for p in plots:
        name = p.rsplit("/", 1)[-1].removesuffix(".png")
        lines.append(f"![{name}]({p})")
    return lines + ([""] if plots else [])


def summary_markdown(leaderboard: pl.DataFrame, failures: pl.DataFrame, meta: dict,
                     plots: dict[str, list[str]] | None = None, verdicts: pl.DataFrame | None = None,
                     unreached: Iterable[dict[str, Any]] | None = None,
                     kept: dict[str, list[str]] | None = None, tables: dict[str, str] | None = None) -> str:
    """The run's markdown report.

    `plots` maps a task to relative image paths to embed under its table (the writer knows where they are).
    `verdicts`: rows of `report.verdicts.ground_truth_verdicts`. `unreached`: {"sae", "task", "hook"} of the SAEs
    whose hook holds none of a task's kept cross-sections; `kept`: task -> the hooks of its kept cross-sections
    (`report.notes.kept_hooks(scores)`), named beside them. `tables`: the run's parquet tables, name -> path
    relative to the report, linked under the run's description.
    """
    tasks = task_names(leaderboard)
    lines = [f"# SAGE report: {meta.get('run', 'run')}", "", *_meta_lines(leaderboard, meta, tasks, tables)]
    for task in tasks:
        lines += _task_lines(leaderboard, task, (plots or {}).get(task, []), verdicts)
    if not tasks:
        lines += ["No leaderboard rows.", "", *core_lines(meta.get("core"))]
    above = above_one_lines(leaderboard, verdicts)
    if above:
        lines += ["## Figures above 1", "", "These are ratios, not shares:", "", *above, ""]
    missed = unreached_lines(unreached, kept)
    if missed:
        lines += ["## SAEs not reached", "", UNREACHED_TEXT[0].upper() + UNREACHED_TEXT[1:] + ":", "", *missed, ""]
    lines += ["## Failed SAEs", ""]
    entries = failure_lines(leaderboard, failures)
    lines += entries if entries else ["none"]
    return "\n".join(lines) + "\n"


def _text_row(values: list[str] | tuple[str, ...], widths: list[int]) -> str:
    """Names (SAE, kind, mapping) left-aligned, numbers right-aligned."""
    return "  ".join(v.ljust(w) if 0 < i < NAME_COLUMNS else v.rjust(w)
                     for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()


def leaderboard_text(leaderboard: pl.DataFrame, task: str | None = None) -> str:
    """The leaderboard table(s) as plain aligned text for a terminal; all tasks when `task` is None."""
    blocks = []
    for t in ([task] if task is not None else task_names(leaderboard)):
        cells = table_cells(leaderboard, t)
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(HEADERS)]
        body = [_text_row(HEADERS, widths), "  ".join("-" * w for w in widths)] + [_text_row(c, widths) for c in cells]
        blocks.append(f"{t}\n" + "\n".join(body) + f"\ncontrols: {controls_verdict(leaderboard, t)[1]}")
    return "\n\n".join(blocks) + ("\n" if blocks else "")
