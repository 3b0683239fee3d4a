"""Issue #25 item 3 on the built-in default: the orchestration share of the scoring stage of the default evaluation
(every zoo SAE on every task, as `make run` evaluates them), per engine, in paired rounds.

`benchmarks/scale.py` measures the share on the tiny zoo (10 SAEs of a 1-layer model: units of ~0.2 s, where a fixed
cost per unit weighs most); this part measures it where the issue sets the goal, on the data root of a `make run`
(the default zoo built, located, fitted and captured at this commit: only the scoring reruns). Each round deletes
scores/, reports/ and Prefect's records (`forget_scores`) and evaluates again on each engine; the first run on each
engine warms it (its model, SAEs and references loaded once) and is not counted.

    python -m benchmarks.scale_default --home sage-data [--clusters threads,local:2] [--rounds 2]

The share is (stage wall x the engine's parallel slots - the units' own compute) / (stage wall x slots), the units'
compute as each timed its scoring and core metrics where it ran (`benchmarks.scale_runs.Run`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import benchmarks.quiet  # noqa: F401  (sets the environment before anything imports Prefect)
from benchmarks.scale_runs import Run, evaluate_on, forget_scores, slots


def default_shares(home: Path, clusters: list[str], rounds: int) -> dict[str, list[Run]]:
    """Per engine, its counted runs of the default evaluation at `home` (a warm-up run first on each)."""
    from flows.engine import open_engine
    from sage_core.config import EvaluateConfig

    cfg = EvaluateConfig()
    runs: dict[str, list[Run]] = {c: [] for c in clusters}
    with ExitStack() as stack:
        engines = {c: stack.enter_context(open_engine(c, "cpu")) for c in clusters}
        for c, eng in engines.items():
            forget_scores(home)
            warm = evaluate_on(eng, cfg, home, timed_units=False)
            print(f"{c:>10}: warm-up run {warm.wall:.1f} s ({len(warm.out['scoring']['units'])} units dispatched)",
                  flush=True)
        for i in range(rounds):
            for c, eng in engines.items():
                forget_scores(home)
                r = evaluate_on(eng, cfg, home, timed_units=False)
                runs[c].append(r)
                print(f"{c:>10}: round {i + 1}: evaluate {r.wall:.1f} s, scoring stage {r.stage_wall:.1f} s x "
                      f"{slots(eng)} slot(s), units' own compute {r.unit_compute:.1f} s: orchestration "
                      f"{100 * r.orchestration_share(slots(eng)):.1f}%", flush=True)
        n_slots = {c: slots(eng) for c, eng in engines.items()}
    print("== orchestration share of the scoring stage on the built-in default (goal <= 10%; medians over the rounds)")
    for c in clusters:
        rs = runs[c]
        n_saes = sum(1 for u in rs[0].out["scoring"]["units"] if u["name"] != "controls")
        print(f"{c:>10}: stage wall {statistics.median(r.stage_wall for r in rs):.1f} s x {n_slots[c]} slot(s), "
              f"units' own compute {statistics.median(r.unit_compute for r in rs):.1f} s: orchestration "
              f"{100 * statistics.median(r.orchestration_share(n_slots[c]) for r in rs):.1f}% (rounds "
              f"{', '.join(f'{100 * r.orchestration_share(n_slots[c]):.1f}%' for r in rs)}); {n_saes} SAEs in "
              f"{len(rs[0].out['scoring']['units'])} dispatched units")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="a data root where `make run` built and evaluated the default zoo")
    ap.add_argument("--clusters", default="threads,local:2")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    home = Path(args.home).resolve()
    if not (home / "zoo").is_dir():
        raise SystemExit(f"{home} holds no zoo: run `make run` (or `python -m benchmarks.fresh_run --keep`) first")

    from prefect.testing.utilities import prefect_test_harness

    from flows.settings import results_in
    from storage.home import SageHome

    t0 = time.perf_counter()
    print(f"data root {home}; {os.cpu_count()} CPU cores; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with prefect_test_harness(server_startup_timeout=180), results_in(SageHome(home)):
        default_shares(home, args.clusters.split(","), args.rounds)
    print(f"total {time.perf_counter() - t0:.0f} s; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("scale-default"):
        main()
