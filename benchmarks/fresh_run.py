"""`make run` on a fresh clone, timed as a new user would, and the figures of the evaluation it produced.

Clones this repository's HEAD into a new directory, runs `make run` there (install included, a new data root),
writes the wall time and the log's stage lines to results/fresh-run.md, then the run's figures to
results/built-in.md (`benchmarks.figures` on the clone's data root). Both files name the commit.

    python -m benchmarks.fresh_run [--dir /tmp/sage-fresh] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    tail = log.read_text().splitlines()[-12:]
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
        "Last lines of the log:",
        "",
        "```",
        *tail,
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
