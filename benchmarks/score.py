"""Benchmark of the evaluate flow, all figures measured in this run on the built zoo under SAGE_HOME:

1. first full evaluation of a set of SAEs (location search, capture, ground-truth fit, references, scoring, core
   metrics; the zoo itself is reused) against re-evaluating the same set plus ONE more SAE: marginal cost ratio
   (target <= 0.1);
2. SAEs scored per minute in the first run;
3. reads from disk per run (`tasks.loaded.LOADS`): the model once, each SAE once, each task's references once.

A fresh `seed` for the location search and for scoring makes run 1 redo the location search and all scoring, while
the zoo stays cached. Caveat: ground-truth parts and activation stores are keyed on the cross-sections, not the seed,
so where the new search keeps the same cross-sections they are reused and run 1 is cheaper than a first-ever run
(after a code change every stage reruns, and run 1 is a true first run).

    python -m benchmarks.score [--home ./sage-data] [--tasks ioi] [--n-saes N]
"""

from __future__ import annotations

import argparse
import os
import time

import benchmarks.quiet  # noqa: F401  (sets the environment before anything imports Prefect)
from sage_core.config import EvaluateConfig
from sage_core.locate.attribution import LocateConfig
from storage.home import SageHome
from storage.sae_sources import list_zoo_saes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("SAGE_HOME", "./sage-data"))
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every zoo task)")
    ap.add_argument("--n-saes", type=int, default=0, help="SAEs in the first run (default: every zoo SAE but one)")
    ap.add_argument("--seed", type=int, default=None, help="location-search seed (default: new each run)")
    args = ap.parse_args()

    from flows.evaluate import run_evaluate
    from tasks import loaded

    h = SageHome(args.home)
    base = EvaluateConfig()
    names = list_zoo_saes(h, base.zoo.model.name)
    if len(names) < 2:
        raise SystemExit(f"need the built zoo under {h.root}; run `make run` first")
    first = names[: args.n_saes] if args.n_saes else names[:-1]
    one = names[len(first)]
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    tasks = tuple(args.tasks.split(",")) if args.tasks else None
    cfg = base.model_copy(update={"tasks": tasks, "locate": LocateConfig(seed=seed),
                                  "score": base.score.model_copy(update={"seed": seed})})

    loads: list[dict[str, int]] = []

    def timed(specs: list[str]) -> float:
        loaded.clear()
        t = time.perf_counter()
        run_evaluate(cfg.model_copy(update={"saes": tuple(f"zoo:{n}" for n in specs)}), home=str(h.root))
        loads.append(dict(loaded.LOADS))
        return time.perf_counter() - t

    t_full = timed(first)  # new seeds: location search and scoring run anew (see the caveat above)
    t_one = timed([*first, one])
    print(f"tasks {', '.join(tasks or base.zoo.tasks)}; location-search seed {seed}")
    print(f"first full evaluation ({len(first)} SAEs): {t_full:7.1f} s  ({60 * len(first) / t_full:.1f} SAEs per "
          f"minute, location search and ground truth included)")
    print(f"same set + 1 SAE ({one}): {t_one:7.1f} s")
    print(f"marginal cost ratio: {t_one / t_full:.3f}   (target <= 0.1)")
    for label, n, counts in (("first run", len(first), loads[0]), ("+1 SAE run", len(first) + 1, loads[1])):
        print(f"reads from disk, {label} ({n} SAEs): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("score"):
        main()
