"""`make run` on a fresh clone, timed as a new user would, and the figures of the evaluation it produced.

Clones this repository's HEAD into a new directory, runs `make run` there (install included, a new data root) with
its output to a log, as `make run > log 2>&1` would, and writes results/fresh-run.md: the wall time, what each stage
cost (from the log's stage lines: the Makefile's install and the CLI's stages, `[sage HH:MM:SS] <stage>: done, <size>
in <seconds> s`) and the log's last lines. Then the run's figures go to results/built-in.md (`benchmarks.figures` on
the clone's data root). Both files name the commit.

    python -m benchmarks.fresh_run [--dir /tmp/sage-fresh] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.progress import STAGES

REPO = Path(__file__).resolve().parents[1]
# the Makefile's install stage and the CLI's (tasks.progress); longest first: "zoo: model training" before "zoo"
UNITS = {"install": "", **dict(STAGES.values())}  # label -> unit; a stage without one announces a note, not a size
LABELS = sorted(UNITS, key=len, reverse=True)
STAGE_LINE = re.compile(rf"^\[sage (?P<clock>\d\d:\d\d:\d\d)\] (?P<label>{'|'.join(map(re.escape, LABELS))}): "
                        r"(?P<text>.*)$")
DONE = re.compile(r"^done(?:, (?P<count>.+?))? in (?P<seconds>\d+(?:\.\d+)?) s$")


@dataclass(frozen=True)
class Stage:
    """One stage of the log: its label, its size as announced (or as counted at its end), its duration, and when it
    ended (seconds since the log's first stage line)."""

    label: str
    size: str
    seconds: float
    ended: float


def _clock(text: str) -> int:
    h, m, s = (int(x) for x in text.split(":"))
    return 3600 * h + 60 * m + s


def parse_stages(log: str) -> list[Stage]:
    """The stages of a run's log in the order they ended. A stage's size is what its end line counted, else what its
    start line announced (a stage without a unit announces a note, not a size); a clock that passes midnight keeps
    counting up."""
    stages, started, first, last, day = [], {}, None, None, 0
    for line in log.splitlines():
        m = STAGE_LINE.match(line.strip())
        if m is None:
            continue
        t = _clock(m["clock"])
        if last is not None and t + day < last:
            day += 24 * 3600
        last = t + day
        first = last if first is None else first
        done = DONE.match(m["text"])
        if done is None:
            started[m["label"]] = m["text"]
            continue
        announced = started.pop(m["label"], "")
        size = done["count"] or (announced if UNITS[m["label"]] and announced != "started" else "")
        stages.append(Stage(m["label"], size, float(done["seconds"]), last - first))
    return stages


def outside_stages(stages: list[Stage], wall: float) -> float:
    """Seconds of the wall time no stage covers (stages may overlap: scoring and core metrics run side by side), to
    a second's precision (the clock in the stage lines)."""
    spans = sorted((s.ended - s.seconds, s.ended) for s in stages)
    covered, reach = 0.0, float("-inf")
    for start, end in spans:
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return max(0.0, wall - covered)


def cost_table(stages: list[Stage], wall: float) -> list[str]:
    """'What each stage costs' as markdown lines: one row per stage, then the time outside every stage."""
    lines = ["| stage | size | seconds | share of the run |", "|---|---|---:|---:|"]
    for s in stages:
        lines.append(f"| {s.label} | {s.size or '–'} | {s.seconds:.1f} | {s.seconds / wall:.0%} |")
    rest = outside_stages(stages, wall)
    lines.append(f"| outside the stages (Python start-up, flow runs, tables) | – | {rest:.0f} | {rest / wall:.0%} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="where to clone (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the clone and its data root afterwards")
    ap.add_argument("--results", default=str(REPO / "results"))
    args = ap.parse_args()

    where = Path(args.dir or tempfile.mkdtemp(prefix="sage-fresh-"))
    if where.exists() and any(where.iterdir()):
        raise SystemExit(f"{where} is not empty; pass a new --dir")
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    # the commit that runs is the clone's, fixed now: this checkout may move on while make run works
    sha = subprocess.run(["git", "-C", str(where), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGE_", "PREFECT_", "VIRTUAL_ENV"))}
    log = where / "make-run.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(["make", "run"], cwd=where, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    text = log.read_text()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    m, s = divmod(round(wall), 60)
    (results / "fresh-run.md").write_text("\n".join([
        "# `make run` on a fresh clone",
        "",
        f"Written by `python -m benchmarks.fresh_run` at commit {sha} on {time.strftime('%Y-%m-%d %H:%M %Z')}, "
        f"on a machine with {os.cpu_count()} CPU cores.",
        "",
        f"- exit code: {rc}",
        f"- wall time, install included: **{m} min {s:02d} s** ({wall:.0f} s)",
        "",
        "## What each stage costs",
        "",
        "From the log's stage lines (`[sage HH:MM:SS] <stage>: done, <size> in <seconds> s`).",
        "",
        *cost_table(parse_stages(text), wall),
        "",
        "## Last lines of the log",
        "",
        "```",
        *text.splitlines()[-12:],
        "```",
        "",
    ]))
    print(f"make run: exit {rc}, {wall:.0f} s; wrote {results / 'fresh-run.md'}")
    if rc == 0:
        subprocess.run([sys.executable, "-m", "benchmarks.figures", "--home", str(where / "sage-data"),
                        "--out", str(results / "built-in.md"),
                        "--commit", sha, "--note", "Data root: a fresh clone's `make run` (see fresh-run.md)."],
                       cwd=REPO, check=True)
    if not args.keep:
        shutil.rmtree(where, ignore_errors=True)
    if rc:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
