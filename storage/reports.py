"""Evaluation reports: <out_dir>/{README.md, plots/*.png}; the tables stay where the run wrote them.

A run's report (`tables`: its scores/<run>/) holds no copy of the run's parquet tables: its README links them by
relative path (`../../scores/<run>/leaderboard.parquet`), its marker records that path, and reading the report reads
them there, checked against the run's own marker and its identity. A report with no run directory (`tables` None)
holds its own scores.parquet, leaderboard.parquet and failures.parquet (if any), as reports written before did.

Plots per task: `<task>-metrics.png` (one bar panel per metric) and `<task>-f1-heatmap.png` (with `-p2`, ... where
its attribute values are cut into several); figures are pyplot-free
`matplotlib.figure.Figure`s (no backend, nothing to close).

Written once (storage.atomic.write_once): a reader sees either no report or a whole one, and every read is checked
against the marker's checksums.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl

from report.figures import f1_heatmap, heatmap_parts, metric_panels, pages
from report.notes import kept_hooks
from report.summary import summary_markdown
from report.tables import ranked_saes
from sage_core.scoring import definitions as defs
from storage.atomic import (
    MARKER,
    StoreError,
    cached_marker,
    is_complete,
    read_marker,
    verify_dir,
    verify_file,
    write_once,
)
from storage.integrity import read_parquet
from storage.scores import RUN_FILES, frames_digest, read_run_table, rebuild_hint, refuse_other_run, same_run
from storage.tables import write_parquet

PLOT_METRICS = defs.names(plotted=True)  # the metrics defined to be plotted, in their order
PLOT_DPI = 110


def _slug(name: str) -> str:
    """A file-name-safe version of a task or metric name."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(name)).strip("_") or "_"


def plot_paths(task: str, page: int = 0, part: int = 0) -> dict[str, str]:
    """Relative paths (inside the report) of a task's plots: per-metric bars and the F1 heatmap (page 0; a later
    page of a task with more SAEs than a figure shows gets `-<page + 1>`; a later part of a heatmap too wide for one,
    `-p<part + 1>`)."""
    more = f"-{page + 1}" if page else ""
    cut = f"-p{part + 1}" if part else ""
    return {"metrics": f"plots/{_slug(task)}-metrics{more}.png",
            "f1-heatmap": f"plots/{_slug(task)}-f1-heatmap{more}{cut}.png"}


def _save(fig, path: Path) -> None:
    # a pyplot-free Figure: nothing to close, nothing global to leak between threads
    fig.savefig(path, dpi=PLOT_DPI, pil_kwargs={"compress_level": 1})  # zlib level 6 took ~0.15 s a figure


def _tasks(scores: pl.DataFrame, leaderboard: pl.DataFrame) -> list[str]:
    seen: list[str] = []
    for df in (leaderboard, scores):
        if df.height and "task" in df.columns:
            seen += [t for t in df.get_column("task").unique(maintain_order=True).to_list() if t not in seen]
    return seen


def write_report(out_dir: Path, scores: pl.DataFrame, leaderboard: pl.DataFrame, failures: pl.DataFrame,
                 meta: dict, verdicts: pl.DataFrame | None = None, unreached: list[dict] | None = None,
                 tables: Path | None = None) -> Path:
    """Write the report directory once; if `out_dir` is already complete with the same run (`meta["run_key"]`, else
    the same tables) it is left as it is, and with another run it is refused (StoreError naming another --run).
    `verdicts`: the ground truth's verdict per attribute, listed under each task. `unreached`: {"sae", "task",
    "hook"} of SAEs whose hook holds none of a task's kept cross-sections (the report names them and the kept hooks,
    read off `scores`). `tables`: the run's directory (`storage.scores.write_run`, holding these very tables) that
    the report links instead of copying; None: the report holds its own copies."""
    out_dir = Path(out_dir)
    identity = {"run_key": meta.get("run_key"), "content": frames_digest(scores, leaderboard, failures)}
    if tables is not None:
        _check_run_dir(Path(tables), identity, out_dir)
    if refuse_other_run(out_dir, identity):
        return out_dir
    tasks = _tasks(scores, leaderboard)
    link = {} if tables is None else {"tables": os.path.relpath(tables, out_dir)}
    with write_once(out_dir, {"kind": "report", **meta, **identity, **link}) as tmp:
        (tmp / "plots").mkdir()
        embedded: dict[str, list[str]] = {}
        for task in tasks:
            embedded[task] = []
            in_board = leaderboard.height > 0 and task in leaderboard.get_column("task").to_list()
            # heatmap rows: best summary first, then any SAE only in `scores`
            ranked = ranked_saes(leaderboard, task) if in_board else []
            extra = scores.filter(pl.col("task") == task).get_column("sae").unique(maintain_order=True)
            order = ranked + [s for s in extra.to_list() if s not in ranked]
            parts = heatmap_parts(scores, task)
            for k, page in enumerate(pages(len(order))):
                paths = plot_paths(task, k)
                if in_board and (k == 0 or page.start < len(ranked)):
                    _save(metric_panels(leaderboard, task, PLOT_METRICS, page), tmp / paths["metrics"])
                    embedded[task].append(paths["metrics"])
                for j, cols in enumerate(parts):
                    name = plot_paths(task, k, j)["f1-heatmap"]
                    of = f" ({', '.join(dict.fromkeys(a for a, _ in cols))}; {j + 1} of {len(parts)})" if len(
                        parts) > 1 else ""
                    _save(f1_heatmap(scores, task, order[page], columns=cols or None, part=of), tmp / name)
                    embedded[task].append(name)
        if tables is None:
            write_parquet(scores, tmp / "scores.parquet")
            write_parquet(leaderboard, tmp / "leaderboard.parquet")
            if failures is not None and failures.height:
                write_parquet(failures, tmp / "failures.parquet")
            links = {what: name for what, name in RUN_FILES.items() if (tmp / name).is_file()}
        else:  # relative, so a data root that is copied or moved still finds its run's tables
            links = {what: f"{link['tables']}/{name}" for what, name in RUN_FILES.items()
                     if (Path(tables) / name).is_file()}
        md = summary_markdown(leaderboard, failures, meta, plots=embedded, verdicts=verdicts, unreached=unreached,
                              kept=kept_hooks(scores), tables=links)
        (tmp / "README.md").write_text(md)
    return out_dir


def _check_run_dir(run_dir: Path, identity: dict[str, str], out_dir: Path) -> None:
    """`run_dir` is a whole run of this identity: a report never links tables of another evaluation."""
    old = cached_marker(run_dir) if run_dir.is_dir() else None
    if old is None:
        raise StoreError(f"the report {out_dir} links its tables at {run_dir}, which is missing; rerun the `sage "
                         f"evaluate` (or watch run) that wrote run {run_dir.name}, with the same options: it rebuilds it")
    try:
        verify_dir(run_dir)  # names a damaged table
    except StoreError as exc:
        raise rebuild_hint(exc, run_dir.name) from exc
    if not same_run(old, identity):
        raise StoreError(f"{run_dir} holds another evaluation than the report {out_dir} was written for; delete "
                         f"{out_dir} and rerun the `sage evaluate` that wrote run {run_dir.name} to report it")


def linked_run(out_dir: Path) -> Path | None:
    """The run directory whose tables a complete report links (checked: whole and the same run), None for a report
    that holds its own tables."""
    out_dir = Path(out_dir)
    try:
        marker = read_marker(out_dir)
    except StoreError as exc:
        raise rebuild_hint(exc, out_dir.name) from exc
    if marker.get("tables") is None:
        return None
    run_dir = Path(os.path.normpath(out_dir / marker["tables"]))
    _check_run_dir(run_dir, {"run_key": marker.get("run_key"), "content": marker.get("content")}, out_dir)
    return run_dir


def _complete(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if not (out_dir / MARKER).is_file():
        raise StoreError(f"no complete report at {out_dir}; run `sage evaluate` first")
    return out_dir


def read_report(out_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(scores, leaderboard) of a complete report, from the run it links (or its own copies), each file checked
    against its directory's marker (a damaged one is named)."""
    out_dir = _complete(out_dir)
    run_dir = linked_run(out_dir)  # its errors say what to do
    if run_dir is not None:
        return read_run_table(run_dir, "scores"), read_run_table(run_dir, "leaderboard")
    try:
        return read_parquet(out_dir / "scores.parquet", out_dir), read_parquet(out_dir / "leaderboard.parquet", out_dir)
    except StoreError as exc:
        raise rebuild_hint(exc, out_dir.name) from exc


def read_readme(report_dir: Path) -> str:
    """The report's README.md, checked against its marker."""
    report_dir = _complete(report_dir)
    return verify_file(report_dir / "README.md", report_dir).read_text()


def report_plots(report_dir: Path) -> dict[str, bytes]:
    """The report's PNGs, path inside the report (`plots/<task>-metrics.png`) -> bytes, in the README's order; each
    checked against the marker first (a damaged, missing or changed plot is named in one line, never returned)."""
    report_dir = Path(report_dir)
    if not (report_dir / MARKER).is_file():
        raise StoreError(f"no complete report at {report_dir}; run `sage evaluate` first")
    files = read_marker(report_dir).get("files")
    if not isinstance(files, dict):
        raise StoreError(f"{report_dir} was written before SAGE recorded checksums of its files; rerun `sage "
                         f"evaluate` with another --run to write a checked report")
    names = [rel for rel in files if rel.startswith("plots/") and rel.endswith(".png")]
    readme = verify_file(report_dir / "README.md", report_dir).read_text() if "README.md" in files else ""

    def place(rel: str) -> int:  # where the README shows it: per task, its metrics then its heatmap
        at = readme.find(f"]({rel})")
        return at if at >= 0 else len(readme)

    return {rel: verify_file(report_dir / rel, report_dir).read_bytes() for rel in sorted(names, key=place)}


def read_failures(out_dir: Path) -> pl.DataFrame:
    """The failures table of a complete report, from the run it links (or its own copy; empty when nothing failed)."""
    out_dir = Path(out_dir)
    if not is_complete(out_dir):
        raise StoreError(f"no complete report at {out_dir}; run `sage evaluate` first")
    run_dir = linked_run(out_dir)
    if run_dir is not None:
        return read_run_table(run_dir, "failures")
    p = out_dir / "failures.parquet"
    return read_parquet(p, out_dir) if p.is_file() else pl.DataFrame(schema={"sae": pl.String, "error": pl.String})


def latest_report(reports_root: Path) -> Path:
    """The report written last (by its marker's time), whole or not: a damaged latest report is named when it is
    read, never passed over for an older one."""
    root = Path(reports_root)
    runs = [d for d in root.glob("*") if (d / MARKER).is_file()] if root.is_dir() else []
    if not runs:
        raise StoreError(f"no report under {root}; run `sage evaluate` first")
    return max(runs, key=lambda d: (d / MARKER).stat().st_mtime)
