"""Benchmark of scale-out, all figures measured in this run (issue #17 item 6):

1. scoring throughput (SAEs per second: the evaluate run's SAEs over its wall time; one `score-sae` task run per SAE
   and one for the controls)
   of the tiny zoo on `--cluster local:1` and `local:2` against `threads`, in paired rounds (each round runs every
   engine once, the ratio is taken within the round; medians over rounds). The zoo, its ground truth and the activation
   stores are built once in a temporary SAGE_HOME; each round deletes scores/, reports/ and .prefect-results/, so the
   scoring (references, units, core metrics, leaderboard, report) reruns while nothing upstream does. The engines stay
   open across rounds: worker start-up is measured once, apart, and so is each engine's first (cold) run;
2. orchestration share of the scoring stage (issue #25 item 3): its wall time (the flow measures it, first unit
   submitted to last settled) times the engine's parallel slots, less the units' own compute (each unit's scoring and
   core metrics as it timed them where it ran), over that slot time; and task runs per SAE;
3. peak memory of each process doing the work (`Engine.peak_memory_mib`);
4. model and SAE reads from disk per run, before load-once (SAGE_NO_LOAD_CACHE=1 in the environment of the flow's
   process and of every live worker) and after it (the cold first run of each engine, then the warm rounds);
5. device figures (`benchmarks/scale_device.py`): the built-in evaluation on `--device` against the CPU; seconds per
   SAE for a GPT-2-small-shaped model (random weights) with 24576-wide SAEs in SAELens layout at one residual hook;
   `threads` against `local:2` on those heavy units (issue #25 item 4: new SAEs every round, paired rounds, each
   engine's torch threads per process printed); the activation store's write throughput against the disk's raw
   sequential write (dd). Without a CUDA GPU they run
   on the CPU at a reduced size (below), which proves the code and gives CPU figures only;
6. projections from the measured figures (`benchmarks/scale_projection.py`): how the cost grows with SAEs x tasks x
   workers, and the wall time for every GPT-2-small residual SAE in the SAELens registry on 1 and 8 GPUs.

Without a GPU the defaults are `--device cpu --gpt2-saes 2 --gpt2-layers 2 --gpt2-vocab 0` (the tokenizer's own
vocabulary: GPT-2's 50257-token unembedding over every position dominates a CPU run) and the figures go to
results/scale.md. With one, `--device cuda --gpt2-saes 8` on the full GPT-2-small shape, written to
results/scale-gpu.md; on a lent GPU, run the device parts alone (sized for a few minutes; not yet run on one):

    python -m benchmarks.scale [--rounds 3] [--clusters threads,local:1,local:2] [--device cpu|cuda]
                               [--gpt2-saes N] [--gpt2-layers N] [--gpt2-vocab N] [--store-mib N]
                               [--heavy-saes N] [--heavy-clusters threads,local:2] [--heavy-rounds N]
                               [--skip throughput,device,gpt2,heavy,store]
    python -m benchmarks.scale --skip throughput --rounds 2        # on a lent GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import benchmarks.quiet  # noqa: F401  (sets the environment before anything imports Prefect)
from benchmarks.memory import reset_peak
from benchmarks.scale_projection import human
from benchmarks.scale_runs import Run, evaluate_on, forget_scores, loads_line, no_cache, slots, task_run_times, tiny_cfg
from sage_core.config import ZooConfig


@dataclass
class EngineFigures:
    name: str
    startup: float
    slots: int
    cold: Run | None = None
    rounds: list[Run] = field(default_factory=list)
    before: Run | None = None
    peak: dict[str, float] = field(default_factory=dict)
    torch_threads: dict[str, int] = field(default_factory=dict)
    marginal: list[tuple[float, float]] = field(default_factory=list)  # (wall grown - wall cached, own task time)

    def throughput(self) -> float:
        """SAEs per second: median over the rounds."""
        return statistics.median(_saes(r) / r.wall for r in self.rounds)

    def orchestration(self) -> float:
        """The scoring stage's orchestration share: median over the rounds."""
        return statistics.median(r.orchestration_share(self.slots) for r in self.rounds)

    def compute_per_unit(self) -> float:
        """A unit's own compute where it ran (Prefect's task run time): median over the rounds of each round's median."""
        return statistics.median(statistics.median(r.unit_times) for r in self.rounds)

    def overhead_per_unit(self) -> float:
        """Wall per unit times the units run at once, less the unit's own compute."""
        return statistics.median(r.wall / r.units for r in self.rounds) * self.slots - self.compute_per_unit()


def marginal_cost(eng, cfg, home: Path, rounds: int, tag: str) -> list[tuple[float, float]]:
    """Issue #25 item 1, per round: the evaluated zoo again (every result cached: the run's fixed start-up) and the
    zoo plus one SAE no run has scored (a perturbed copy of a zoo SAE at its hook): (the difference of the two walls,
    that SAE's own task time: its `resolve` and `score` task runs where they ran)."""
    from benchmarks.memory import write_copy
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes
    from tasks.common import artifact_slug

    h = SageHome(home)
    names = list_zoo_saes(h, cfg.zoo.model.name)
    zoo = tuple(f"zoo:{n}" for n in names)
    out = []
    for i in range(rounds):
        marker = f"-new-{artifact_slug(tag)}-{i}"  # in its directory's name, so in its task runs' names
        name = f"{names[i % len(names)]}{marker}"
        new = write_copy(h.root / "zoo" / cfg.zoo.model.name / "saes" / names[i % len(names)],
                         home.parent / "new-saes" / name, 0.01, 7000 + i)
        cached = evaluate_on(eng, cfg.model_copy(update={"saes": zoo}), home, timed_units=False)
        grown = evaluate_on(eng, cfg.model_copy(update={"saes": (*zoo, str(new))}), home, timed_units=False)
        own = [sec for n, sec in task_run_times(grown.flow_run_id, ("resolve ", "score ")) if marker in n]
        out.append((grown.wall - cached.wall, sum(own)))
    return out


def _saes(run) -> int:
    return sum(1 for u in run.out["scoring"]["units"] if u["name"] != "controls")


def reset_peaks(engines: dict) -> bool:
    """Peaks from now on, in the flow's process (it built the zoo) and every worker; False where it cannot be done."""
    ok = reset_peak()
    for eng in engines.values():
        if eng.distributed:
            ok = all(eng.client.run(reset_peak).values()) and ok
    return ok


def throughput_part(home: Path, clusters: list[str], rounds: int) -> dict[str, EngineFigures]:
    """Part 1-4 on the tiny zoo already built and evaluated under `home`; prints as it goes."""
    from flows.engine import open_engine
    from tasks import loaded

    cfg = tiny_cfg()
    figs: dict[str, EngineFigures] = {}
    with ExitStack() as stack:
        engines = {}
        for name in clusters:
            t = time.perf_counter()
            engines[name] = stack.enter_context(open_engine(name, "cpu"))
            figs[name] = EngineFigures(name, time.perf_counter() - t, slots(engines[name]))
        loaded.clear()  # `threads` works in this process, which built the zoo: its first run starts cold too
        fresh_peaks = reset_peaks(engines)
        for name, eng in engines.items():
            forget_scores(home)
            figs[name].cold = evaluate_on(eng, cfg, home)
        for _ in range(rounds):
            for name, eng in engines.items():
                forget_scores(home)
                figs[name].rounds.append(evaluate_on(eng, cfg, home))
        for name, eng in engines.items():
            figs[name].marginal = marginal_cost(eng, cfg, home, rounds, name)
        for name, eng in engines.items():
            figs[name].peak = eng.peak_memory_mib()
            figs[name].torch_threads = {("flow" if w == "flow" else f"worker {i}"): n for i, (w, n)
                                        in enumerate(sorted(eng.torch_threads().items()))}
        for name, eng in engines.items():  # last: reading everything again raises the peaks measured above
            no_cache(eng, True)
            try:
                forget_scores(home)
                figs[name].before = evaluate_on(eng, cfg, home, timed_units=False)
            finally:
                no_cache(eng, False)
    report_throughput(figs, clusters, fresh_peaks)
    return figs


def report_throughput(figs: dict[str, EngineFigures], clusters: list[str], fresh_peaks: bool) -> None:
    base = figs[clusters[0]]
    n_saes = _saes(base.rounds[0])
    print(f"== 1. scoring throughput, tiny zoo ({n_saes} SAEs, {base.rounds[0].units} scoring task runs per run: one "
          f"score-sae per SAE and one for the controls), {len(base.rounds)} paired rounds, this machine "
          f"({os.cpu_count()} CPU cores)")
    for name in clusters:
        f = figs[name]
        per_round = [b.wall / r.wall for r, b in zip(f.rounds, base.rounds, strict=True)]
        print(f"{name:>10}: start-up {f.startup:5.1f} s, cold first run {f.cold.wall:5.1f} s; warm runs median "
              f"{statistics.median(r.wall for r in f.rounds):5.1f} s = {f.throughput():.2f} SAEs/s; vs "
              f"{clusters[0]} {statistics.median(per_round):.2f}x (rounds {', '.join(f'{x:.2f}' for x in per_round)}); "
              f"torch threads per process {f.torch_threads}")
    print("== 2. orchestration share of the scoring stage (goal <= 10%; medians over the rounds)")
    for name in clusters:
        f = figs[name]
        stage = statistics.median(r.stage_wall for r in f.rounds)
        compute = statistics.median(r.unit_compute for r in f.rounds)
        print(f"{name:>10}: stage wall {stage:.2f} s x {f.slots} slot(s) = {stage * f.slots:.2f} s against its "
              f"units' own compute {compute:.2f} s (as each timed its work where it ran): orchestration "
              f"{100 * f.orchestration():.1f}% (rounds {', '.join(f'{100 * r.orchestration_share(f.slots):.1f}%' for r in f.rounds)}); "
              f"{(f.rounds[0].units + _saes(f.rounds[0])) / _saes(f.rounds[0]):.2f} task runs per SAE (its resolve-sae "
              f"and score-sae, and the controls' score-sae shared)")
    print("== 2b. marginal cost of one new SAE (issue #25 item 1, goal <= 1.3): (wall of the evaluated set plus one "
          "new SAE - wall of the set alone, every result cached) / the new SAE's own task time (resolve + score)")
    for name in clusters:
        m = figs[name].marginal
        if m:
            ratios = [d / own for d, own in m]
            print(f"{name:>10}: median {statistics.median(ratios):.2f} (rounds "
                  f"{', '.join(f'{d:.2f} s / {own:.2f} s = {d / own:.2f}' for d, own in m)})")
    print(f"== 3. peak resident memory per process doing the work (MiB, over the cold run and the rounds"
          f"{'' if fresh_peaks else '; could not reset: since each process started'})")
    for name in clusters:
        peaks = ", ".join(f"{'flow process' if w == 'flow' else w}: {m:.0f}" for w, m in sorted(figs[name].peak.items()))
        print(f"{name:>10}: {peaks}")
    print("== 4. reads from disk per run (flow process + every worker): before load-once (SAGE_NO_LOAD_CACHE=1) "
          "and after it")
    for name in clusters:
        f = figs[name]
        print(f"{name:>10}: before {loads_line(f.before.loads)} ({f.before.wall:.1f} s)")
        print(f"{'':>10}  after, cold first run {loads_line(f.cold.loads)}; warm rounds "
              f"{loads_line(f.rounds[-1].loads)}")


def build(home: Path) -> tuple[float, int]:
    """The tiny zoo, its ground truth and stores, and one full evaluation on `threads`: (seconds, SAEs in the zoo)."""
    from flows.engine import open_engine
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    t = time.perf_counter()
    with open_engine("threads", "cpu") as eng:
        evaluate_on(eng, tiny_cfg(), home, timed_units=False)
    return time.perf_counter() - t, len(list_zoo_saes(SageHome(home), ZooConfig.tiny().model.name))


def main() -> None:
    import torch

    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds of the throughput comparison")
    ap.add_argument("--clusters", default="threads,local:1,local:2", help="engines; the first is the baseline")
    ap.add_argument("--device", default="cuda" if gpu else "cpu", help="device of the device figures (part 5)")
    ap.add_argument("--gpt2-saes", type=int, default=8 if gpu else 2, help="new 24576-wide SAEs timed (0: skip)")
    ap.add_argument("--gpt2-layers", type=int, default=12 if gpu else 2, help="layers of the GPT-2-shaped model")
    ap.add_argument("--gpt2-vocab", type=int, default=50257 if gpu else 0, help="its d_vocab (0: the tokenizer's)")
    ap.add_argument("--store-mib", type=int, default=2048 if gpu else 256, help="MiB written per store round")
    ap.add_argument("--heavy-saes", type=int, default=4, help="new 24576-wide SAEs per run, engines compared")
    ap.add_argument("--heavy-clusters", default="threads,local:2", help="engines compared on heavy units")
    ap.add_argument("--heavy-rounds", type=int, default=2, help="paired rounds of the heavy-unit comparison")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: throughput,device,gpt2,heavy,store")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    clusters = args.clusters.split(",")

    from prefect.testing.utilities import prefect_test_harness

    from benchmarks import scale_device as dev
    from flows.settings import results_in
    from storage.home import SageHome

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sage-bench-scale-") as tmp, prefect_test_harness(server_startup_timeout=180):
        home = Path(tmp) / "home"
        with results_in(SageHome(home)):
            seconds, n_saes = build(home)
            print(f"setup: tiny zoo ({n_saes} SAEs, tasks {', '.join(ZooConfig.tiny().tasks)}) built, located, fitted, "
                  f"captured and evaluated once on threads in {seconds:.1f} s (temporary SAGE_HOME)")
            figs = {}
            if "throughput" not in skip:
                figs = throughput_part(home, clusters, args.rounds)
            print(f"== 5. device figures on {args.device}" + (
                "" if args.device != "cpu" else " (asked for by --device cpu)" if gpu else
                " (NO CUDA GPU on this machine: the GPU figures were not measured; the same code runs on the CPU "
                "at a reduced size)"))
            if "device" not in skip:
                dev.device_vs_cpu(home, args.device, args.rounds if args.device != "cpu" else 1)
            per_sae = None
            if "gpt2" not in skip and args.gpt2_saes:
                per_sae = dev.gpt2_per_sae(home, args.device, args.gpt2_saes, args.gpt2_layers, args.gpt2_vocab)
                if "heavy" not in skip and args.heavy_saes:
                    dev.gpt2_engines(home, per_sae, args.heavy_clusters.split(","), args.heavy_rounds,
                                     args.heavy_saes)
            if "store" not in skip:
                dev.store_vs_dd(Path(tmp), args.store_mib, args.rounds)
        dev.projections(figs, clusters, per_sae, args.device)
    print(f"total {human(time.perf_counter() - t0)}")


if __name__ == "__main__":
    import torch

    from benchmarks.record import recording

    with recording("scale-gpu" if torch.cuda.is_available() else "scale"):  # a lent GPU's figures apart
        main()
