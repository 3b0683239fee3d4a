"""Benchmark of the evaluate flow, all figures measured in this run on the built zoo under SAGE_HOME:

1. first full evaluation of a set of SAEs (location search, capture, ground-truth fit, references, scoring, core
   metrics; the zoo itself is reused) against re-evaluating the same set plus ONE more SAE: marginal cost ratio
   (target <= 0.1);
2. SAEs scored per minute, from a run that adds several more SAEs to the evaluated set.

A fresh `seed` for the location search makes run 1 a genuinely new evaluation (nothing downstream is cached), while
the zoo stays cached.

    python -m benchmarks.score [--home ./sage-data] [--n-saes 6] [--tasks ioi]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sage-bench-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("TQDM_DISABLE", "1")

from sage_core.attribution import LocateConfig  # noqa: E402
from sage_core.config import EvaluateConfig  # noqa: E402
from storage.home import SageHome  # noqa: E402
from storage.sae_sources import list_zoo_saes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("SAGE_HOME", "./sage-data"))
    ap.add_argument("--n-saes", type=int, default=6, help="SAEs in the first evaluated set")
    ap.add_argument("--n-more", type=int, default=4, help="SAEs added in the throughput run")
    ap.add_argument("--tasks", default="ioi")
    ap.add_argument("--seed", type=int, default=None, help="location-search seed (default: new each run)")
    args = ap.parse_args()

    from flows.evaluate import run_evaluate

    h = SageHome(args.home)
    base = EvaluateConfig()
    names = list_zoo_saes(h, base.zoo.model.name)
    if len(names) < args.n_saes + 1 + args.n_more:
        raise SystemExit(f"need {args.n_saes + 1 + args.n_more} zoo SAEs under {h.root}; run `make run` first")
    # residual SAEs of several families first (they reach the most cross-sections), sub-layer ones after
    names = sorted(names, key=lambda n: ("resid" not in n, n))
    first, one, more = names[: args.n_saes], names[args.n_saes], names[args.n_saes + 1 : args.n_saes + 1 + args.n_more]
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    cfg = base.model_copy(update={"tasks": tuple(args.tasks.split(",")), "locate": LocateConfig(seed=seed),
                                  "projections": False})

    def timed(specs: list[str]) -> float:
        t = time.perf_counter()
        run_evaluate(cfg.model_copy(update={"saes": tuple(f"zoo:{n}" for n in specs)}), home=str(h.root))
        return time.perf_counter() - t

    timed(first[:1])  # warm the Prefect server and the zoo cache outside the measured runs
    cfg = cfg.model_copy(update={"locate": LocateConfig(seed=seed + 1)})
    t_full = timed(first)
    t_one = timed([*first, one])
    t_more = timed([*first, one, *more])
    print(f"tasks {args.tasks}; first set {len(first)} SAEs; location-search seed {seed + 1}")
    print(f"first full evaluation      : {t_full:7.1f} s")
    print(f"same set + 1 SAE           : {t_one:7.1f} s")
    print(f"marginal cost ratio        : {t_one / t_full:.3f}   (target <= 0.1)")
    print(f"+{len(more)} SAEs              : {t_more:7.1f} s  -> {60 * len(more) / t_more:.1f} SAEs per minute "
          f"(flow overhead included)")


if __name__ == "__main__":
    main()
