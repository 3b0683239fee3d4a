"""Benchmark: memory does not grow with the number of SAEs (issue #25 item 5).

Goal: evaluating 100 SAEs keeps the peak resident memory of every process doing the work within 1.2x of evaluating 10.

The tiny zoo, its ground truth and stores are built and evaluated once in a temporary SAGE_HOME. Then N perturbed
copies of the zoo's SAEs are written as SAE directories in SAELens' layout (each zoo SAE's cfg.json, its weights with
small Gaussian noise, a directory name of its own: `<zoo name>-copy-<i>`), taken round-robin over the zoo's SAEs so
10 copies are one of each. For each engine (`threads`, `local:2`) and each count (10, 100), one evaluate run of that
many copies runs in a FRESH process (`--worker`: no peak carries over from another measurement; a local cluster's
workers start with it), after scores/, reports/ and .prefect-results/ are deleted (the scoring recomputes; the zoo,
ground truth and stores stay). Each reports its evaluate run's wall time and, for every process doing the work (the
flow's process and, on a Dask cluster, each worker), its peak RSS over its life (the goal's figure, start-up included:
imports, the Prefect client, the Dask worker), its peak during the evaluate run alone and its RSS before and after the
run: growth with the SAE count that a start-up peak hides still shows in the last three.

The peaks are Linux's VmHWM (/proc/self/status; the one since the start-up is read, then reset for the run), not
ru_maxrss (`Engine.peak_memory_mib`): a process started by fork + exec inherits in ru_maxrss the peak of the process
that started it (the kernel keeps the old image's high-water mark across exec), so a worker started by this script
after it built the zoo would report the builder's ~1 GiB. Off Linux, ru_maxrss it is.

All runs talk to one Prefect server, started here (`prefect_test_harness`) and passed to the workers as PREFECT_API_URL
(its own memory is no process doing the work). Figures go to results/memory.md.

    python -m benchmarks.memory [--saes 10,100] [--clusters threads,local:2] [--noise 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmarks.quiet  # noqa: F401  (sets the environment before anything imports Prefect)

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.2
COPY = "-copy-"
SAE_WEIGHTS = "sae_weights.safetensors"
SAE_CFG = "cfg.json"


# -- pure parts (tests/unit/benchmarks/test_memory_bench.py) ----------------------------------------------------------
def perturbed(tensors: dict, scale: float, seed: int) -> dict:
    """Each floating tensor plus Gaussian noise of `scale` times its own standard deviation (a constant tensor: times
    its mean magnitude, or `scale` itself where that is zero); same shapes and dtypes, other tensors unchanged."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in tensors.items():
        if not t.is_floating_point() or t.numel() == 0:
            out[name] = t.clone()
            continue
        x = t.double()
        spread = float(x.std()) if x.numel() > 1 else 0.0
        spread = spread or float(x.abs().mean()) or 1.0
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64) * (scale * spread)
        out[name] = (x + noise).to(t.dtype).contiguous()
    return out


def copy_names(zoo_names: list[str], n: int) -> list[str]:
    """`n` copy names, round-robin over the zoo's SAEs: the first len(zoo) are one copy of each."""
    if not zoo_names:
        raise ValueError("the zoo has no SAEs to copy")
    return [f"{zoo_names[i % len(zoo_names)]}{COPY}{i // len(zoo_names)}" for i in range(n)]


def write_copy(src: Path, dst: Path, scale: float, seed: int) -> Path:
    """An SAE directory in SAELens' layout at `dst`: `src`'s cfg.json and its weights perturbed (`perturbed`). Nothing
    else of the zoo's directory (its completeness marker names the original files' hashes)."""
    from safetensors.torch import load_file, save_file

    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / SAE_CFG, tmp / SAE_CFG)
    save_file(perturbed(load_file(str(src / SAE_WEIGHTS)), scale, seed), str(tmp / SAE_WEIGHTS))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def ranked(procs: dict[str, dict]) -> dict[str, dict]:
    """Processes by role: "flow" and the Dask workers as "worker 1..k", the largest peak first (workers are alike and
    their addresses change from run to run, so one run's largest is compared with another's largest)."""
    workers = sorted((m for w, m in procs.items() if w != "flow"), key=lambda m: -m["peak"])
    out = {"flow": procs["flow"]} if "flow" in procs else {}
    return out | {f"worker {i}": m for i, m in enumerate(workers, 1)}


def ratios(small: dict[str, dict], large: dict[str, dict], key: str = "peak") -> dict[str, float]:
    """large / small of `key` per process both runs have (where both measured it)."""
    return {p: large[p][key] / small[p][key] for p in small
            if p in large and small[p].get(key) and large[p].get(key) is not None}


def _mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def report_lines(cluster: str, runs: dict[int, dict], goal: float = GOAL) -> list[str]:
    """The lines for one engine: per count its wall and per process its memory; per process the ratio of the largest
    count's peak to the smallest's, against the goal. `runs`: count -> {"wall": s, "procs": {process: {"peak",
    "run_peak", "start", "end"}}} (MiB; processes already `ranked`)."""
    counts = sorted(runs)
    lines = [f"{cluster}:"]
    for n in counts:
        r = runs[n]
        parts = f", {r['parts']} (unit, task) results" if r.get("parts") else ""
        lines.append(f"  {n:>4} SAEs: evaluate wall {r['wall']:6.1f} s ({r['wall'] / n:.2f} s per SAE{parts})")
        for p, m in r["procs"].items():
            lines.append(f"      {p:>8}: peak RSS {_mib(m['peak'])} MiB (during the evaluate run alone "
                         f"{_mib(m.get('run_peak'))}); RSS {_mib(m.get('start'))} before the run, "
                         f"{_mib(m.get('end'))} after")
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        small, large = runs[lo]["procs"], runs[hi]["procs"]
        rs, during, end = ratios(small, large), ratios(small, large, "run_peak"), ratios(small, large, "end")
        worst = max(rs.values(), default=float("nan"))
        for p, x in rs.items():
            lines.append(f"  {p:>8} peak {hi}/{lo}: {x:.2f}x ({large[p]['peak'] - small[p]['peak']:+.0f} MiB); "
                         f"during the run {during[p]:.2f}x; RSS after the run {end[p]:.2f}x"
                         if p in during and p in end else
                         f"  {p:>8} peak {hi}/{lo}: {x:.2f}x ({large[p]['peak'] - small[p]['peak']:+.0f} MiB)")
        lines.append(f"  largest {worst:.2f}x: {'MET' if worst <= goal else 'NOT MET'} (goal: every process's peak "
                     f"with {hi} SAEs <= {goal:.1f}x with {lo})")
    return lines


# -- the measuring process ------------------------------------------------------------------------------------------
def _status_mib(field: str) -> float | None:
    """A VmHWM / VmRSS line of /proc/self/status, MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_now() -> dict[str, float | None]:
    """This process: ru_maxrss (may hold its starter's peak: the module's docstring), its peak RSS since it started or
    the last reset (VmHWM), its RSS now; MiB."""
    return {"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "hwm": _status_mib("VmHWM"),
            "rss": _status_mib("VmRSS")}


def reset_peak() -> bool:
    """Restart this process's VmHWM from its present RSS (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _on_every(eng, fn) -> dict:
    """`fn()` in the flow's process ("flow") and in every worker of a Dask engine (by address)."""
    out = {"flow": fn()}
    if eng.distributed:
        out |= dict(eng.client.run(fn))
    return out


def worker(home: Path, cluster: str, specs_file: Path) -> None:
    """One evaluate run of the specs in `specs_file` on `cluster`, in this fresh process; prints a RESULT line:
    per process its peak over its life (start-up included: the goal's figure), its peak during the evaluate run
    alone and its RSS after it, MiB."""
    from benchmarks.scale_runs import evaluate_on, tiny_cfg
    from flows.engine import open_engine
    from flows.settings import results_in
    from storage.home import SageHome

    specs = tuple(json.loads(specs_file.read_text()))
    with results_in(SageHome(home)), open_engine(cluster, "cpu") as eng:
        before = _on_every(eng, memory_now)
        reset = all(_on_every(eng, reset_peak).values())
        run = evaluate_on(eng, tiny_cfg(saes=specs), home, timed_units=False)
        after = _on_every(eng, memory_now)
        scored = sum(1 for u in run.out["scoring"]["units"] if u["name"] != "controls")
        if scored != len(specs):
            raise SystemExit(f"scored {scored} SAEs, asked for {len(specs)}")
    procs = {}
    for p, a in after.items():
        b = before[p]
        if b["hwm"] is None or a["hwm"] is None:  # no /proc: ru_maxrss, the peak since start-up only
            hwm, peak = None, a["maxrss"]
        else:
            hwm = a["hwm"] if reset else None
            peak = max(b["hwm"], a["hwm"])
        procs[p] = {"peak": peak, "run_peak": hwm, "end": a["rss"], "start": b["rss"]}
    parts = sum(u["units"] for u in run.out["scoring"]["units"])  # (unit, task) results scored, controls included
    print("RESULT " + json.dumps({"wall": run.wall, "procs": procs, "n": len(specs), "parts": parts}), flush=True)


def measure(home: Path, cluster: str, specs: list[str], api_url: str, timeout_s: float = 900) -> dict:
    """`worker` in a fresh subprocess, after the scoring's outputs are deleted; its result with the process's wall."""
    from benchmarks.scale_runs import forget_scores

    forget_scores(home)
    specs_file = home.parent / f"specs-{len(specs)}.json"
    specs_file.write_text(json.dumps(specs))
    env = dict(os.environ) | {"PREFECT_API_URL": api_url}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--worker", "--home", str(home), "--cluster",
                        cluster, "--specs", str(specs_file)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout_s, check=False)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT "):])
            out["process_wall"] = time.perf_counter() - t
            out["procs"] = ranked(out["procs"])
            return out
    raise SystemExit(f"the {cluster} run of {len(specs)} SAEs failed (exit {p.returncode}):\n"
                     f"{(p.stdout + p.stderr)[-4000:]}")


def build(home: Path) -> tuple[float, list[str]]:
    """The tiny zoo, its ground truth and stores, evaluated once on threads: (seconds, the zoo's SAE names)."""
    from benchmarks.scale_runs import evaluate_on, tiny_cfg
    from flows.engine import open_engine
    from sage_core.config import ZooConfig
    from storage.home import SageHome
    from storage.sae_sources import list_zoo_saes

    t = time.perf_counter()
    with open_engine("threads", "cpu") as eng:
        evaluate_on(eng, tiny_cfg(), home, timed_units=False)
    return time.perf_counter() - t, list_zoo_saes(SageHome(home), ZooConfig.tiny().model.name)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saes", default="10,100", help="SAE counts compared, smallest first (default 10,100)")
    ap.add_argument("--clusters", default="threads,local:2", help="engines (default threads,local:2)")
    ap.add_argument("--noise", type=float, default=0.01, help="noise of a copy's weights, times each tensor's std")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--cluster", help=argparse.SUPPRESS)
    ap.add_argument("--specs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.home), args.cluster, Path(args.specs))
        return
    counts = sorted(int(n) for n in args.saes.split(","))
    clusters = args.clusters.split(",")

    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    from benchmarks.record import recording
    from flows.settings import results_in
    from sage_core.config import ZooConfig
    from storage.home import SageHome

    with recording("memory"), tempfile.TemporaryDirectory(prefix="sage-bench-memory-") as tmp, \
            prefect_test_harness(server_startup_timeout=180):
        t0 = time.perf_counter()
        home = Path(tmp) / "home"
        with results_in(SageHome(home)):
            seconds, zoo = build(home)
        model = ZooConfig.tiny().model.name
        print(f"setup: tiny zoo ({len(zoo)} SAEs) built, located, fitted, captured and evaluated once on threads in "
              f"{seconds:.1f} s (temporary SAGE_HOME); this machine: {os.cpu_count()} CPU cores, load average "
              f"{_load()} (other work on the machine slows the walls, not the memory)")
        t = time.perf_counter()
        names = copy_names(zoo, max(counts))
        copies = Path(tmp) / "copies"
        for i, name in enumerate(names):
            write_copy(SageHome(home).sae_dir(model, name.split(COPY)[0]), copies / name, args.noise, seed=i)
        specs = [str(copies / n) for n in names]
        print(f"copies: {len(specs)} SAE directories in SAELens' layout, round-robin over the zoo's {len(zoo)} SAEs "
              f"(weights + N(0, ({args.noise} x each tensor's std)^2)), written in {time.perf_counter() - t:.1f} s")
        print(f"== peak resident memory of every process doing the work, each run in a fresh process (goal: "
              f"{counts[-1]} SAEs within {GOAL:.1f}x of {counts[0]})")
        api_url = prefect.settings.PREFECT_API_URL.value()
        for cluster in clusters:
            runs = {}
            for n in counts:
                runs[n] = measure(home, cluster, specs[:n], api_url)
                print(f"  ({cluster}, {n} SAEs: process wall {runs[n]['process_wall']:.1f} s with start-up)",
                      flush=True)
            for line in report_lines(cluster, runs):
                print(line, flush=True)
        print(f"total {time.perf_counter() - t0:.0f} s; load average {_load()}")


if __name__ == "__main__":
    main()
