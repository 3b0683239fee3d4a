"""The build-dependent figures the README points to, written from a finished evaluation (never typed by hand).

Reads one SAGE_HOME after `make run` (or any `sage evaluate`): the built-in model's task metrics, the SAE zoo's
metrics, the location search's validation, the ground truth's verdicts and the evaluation's leaderboard, and writes
them as markdown with the commit and the data root they came from.

    python -m benchmarks.figures [--home ./sage-data] [--run NAME] [--out results/built-in.md]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import time
from pathlib import Path

import polars as pl

from report.verdicts import ground_truth_verdicts, verdict_line
from storage.atomic import MARKER, is_complete
from storage.home import SageHome
from storage.reports import read_report

MODEL = "sage-tiny"


def commit() -> str:
    """The commit the figures came from, marked when the work tree had uncommitted changes to tracked files."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent).stdout.strip()

    sha = git("rev-parse", "--short=7", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _table(df: pl.DataFrame, digits: int = 3) -> list[str]:
    cols = df.columns
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        out.append("| " + " | ".join(_f(v, digits) if isinstance(v, float) else str(v) for v in row) + " |")
    return out


def latest_dir(root: Path, name: str | None = None) -> Path:
    """`root/name`, or the complete directory under `root` written last."""
    if name:
        return root / name
    done = [d for d in root.glob("*") if d.is_dir() and is_complete(d)] if root.is_dir() else []
    if not done:
        raise SystemExit(f"nothing complete under {root}; run `make run` first")
    return max(done, key=lambda d: (d / MARKER).stat().st_mtime)


def zoo_section(h: SageHome) -> list[str]:
    report = h.zoo_report(MODEL)
    out = ["## The built-in model and its SAE zoo", ""]
    tm, sm = report / "task_metrics.parquet", report / "sae_metrics.parquet"
    if tm.is_file():
        out += ["Task performance of `sage-tiny` on held-out test prompts:", "",
                *_table(pl.read_parquet(tm)), ""]
    if sm.is_file():
        s = pl.read_parquet(sm)
        resid = s.filter(pl.col("hook").str.contains("resid"))
        per_arch = (resid.group_by("architecture").agg(
            pl.len().alias("n"), pl.col("explained_variance").min().alias("EV min"),
            pl.col("explained_variance").max().alias("EV max"), pl.col("l0").min().alias("L0 min"),
            pl.col("l0").max().alias("L0 max"), pl.col("ce_loss_recovered").min().alias("CE rec. min"),
            pl.col("ce_loss_recovered").max().alias("CE rec. max")).sort("architecture"))
        out += [f"Residual-stream SAEs on held-out text ({resid.height} of {s.height} zoo SAEs; "
                "L0 on background activations):", "", *_table(per_arch, 2), ""]
    return out


def locations_section(h: SageHome) -> list[str]:
    root = h.root / "locations"
    dirs = [d for d in root.glob("*") if d.name != "parts" and is_complete(d)] if root.is_dir() else []
    if not dirs:
        return []
    d = max(dirs, key=lambda p: (p / MARKER).stat().st_mtime)
    v = pl.read_parquet(d / "validation.parquet")
    cols = ["task", "attribute"] + [c for c in v.columns if c.endswith(("_spearman", "_top5_agreement", "_recovered"))]
    return ["## Location search: AtP ranking against real patching", "",
            f"`locations/{d.name}` (the search written last under this data root):", "",
            *_table(v.select(cols).sort("task", "attribute"), 3), ""]


def verdicts_section(gt_dir: Path, tasks: list[str]) -> list[str]:
    q = pl.read_parquet(gt_dir / "quality.parquet")
    v = ground_truth_verdicts(q).filter(pl.col("task").is_in(tasks))
    return ["## Ground truth: one verdict per attribute", "",
            *[f"- {r['task']} {verdict_line(r)}" for r in v.to_dicts()], ""]


def controls_section(board: pl.DataFrame) -> list[str]:
    out = ["## Scores: controls and the trained SAEs", "",
           "Per task: the oracle's and the random control's mean summary over their cross-sections, the best trained "
           "SAE, and on how many trained SAEs oracle > SAE > random holds over the cross-sections each SAE reaches.",
           "", "| task | oracle | best trained | random | oracle > SAE > random | exceptions |", "|---|---|---|---|---|---|"]
    for task in board["task"].unique(maintain_order=True).to_list():
        b = board.filter(pl.col("task") == task)
        kind = {k: b.filter(pl.col("kind") == k) for k in ("oracle", "random", "trained")}
        tr = kind["trained"].filter(pl.col("summary").is_not_null() & pl.col("oracle_same").is_not_null()
                                    & pl.col("random_same").is_not_null())
        ok = tr.filter((pl.col("oracle_same") > pl.col("summary")) & (pl.col("summary") > pl.col("random_same")))
        bad = tr.join(ok.select("sae"), on="sae", how="anti")
        best = kind["trained"].filter(pl.col("summary").is_not_null()).sort("summary", descending=True).head(1)
        best_s = f"{_f(best['summary'][0])} ({best['sae'][0]})" if best.height else "n/a"
        exc = "; ".join(f"{r['sae']} {_f(r['summary'])} (oracle {_f(r['oracle_same'])}, random {_f(r['random_same'])})"
                        for r in bad.to_dicts()) or "none"
        out.append(f"| {task} | {_f(kind['oracle']['summary'].mean() if kind['oracle'].height else None)} | {best_s} "
                   f"| {_f(kind['random']['summary'].mean() if kind['random'].height else None)} "
                   f"| {ok.height} of {tr.height} | {exc} |")
    return [*out, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default=os.environ.get("SAGE_HOME", "./sage-data"))
    ap.add_argument("--run", default=None, help="report to read (default: the one written last)")
    ap.add_argument("--out", default="results/built-in.md")
    ap.add_argument("--note", default="", help="a line to add under the header (e.g. how the data root was made)")
    ap.add_argument("--commit", default=None, help="the commit that produced the data root (default: this checkout's)")
    args = ap.parse_args()

    h = SageHome(args.home)
    report = latest_dir(h.reports_root(), args.run)
    _, board = read_report(report)  # the tables of the run it links, checked
    meta = {k: v for k, v in __import__("json").loads((report / MARKER).read_text()).items()}
    tasks = list(meta.get("tasks") or board["task"].unique().to_list())
    gt = Path(meta["ground_truth"])
    gt = gt if gt.is_absolute() else h.root / gt
    lines = [
        "# Figures of the built-in default",
        "",
        f"Written by `python -m benchmarks.figures` from a data root made at commit {args.commit or commit()} on {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"from run `{report.name}` ({len(tasks)} tasks, {meta.get('n_saes', '?')} SAE specs). "
        "CPU training is not bit-reproducible across runs, so another build's figures differ a little.",
        "",
        *([args.note, ""] if args.note else []),
        *zoo_section(h),
        *locations_section(h),
        *verdicts_section(gt, tasks),
        *controls_section(board),
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
