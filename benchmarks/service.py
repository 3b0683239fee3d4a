"""Benchmark of the standing service (issue #18, items 5-6), every figure measured in this run on a fresh temporary
SAGE_HOME (mode 0711: the `postgres` user must enter it), on ports of its own, with the caller's PREFECT_* settings
dropped (as tests/acceptance/test_service.py does):

1. `make serve`: `flows.service.start`, what `sage serve start` runs after make's install checks (PostgreSQL with
   initdb, the Prefect server on it, the work pool, `prefect deploy --all`, one process worker), each step's seconds;
2. the tiny zoo built into that home with `sage zoo build --tiny`, against the service's API, before any watch run
   (timed apart, so no watch run below builds it);
3. the first run of the `watch/watch-nightly` deployment (`prefect deployment run ... --watch`, sources
   `dir:SAGE_HOME/inbox`, cfg `WatchConfig.tiny()`) after a zoo SAE with changed weights was dropped into the inbox:
   cold, it runs evaluate's upstream stages for the first time in this home; then a run that finds nothing new;
4. paired rounds: drop another SAE with weights no run has scored, run (evaluates one new SAE), run again (finds
   nothing new). THE FIGURE: a watch run that finds nothing new / a watch run that evaluates one new SAE (the
   baseline, measured in the same round), median over the rounds, by the wall of the `prefect deployment run --watch`
   command (what a user waits for) and by the flow run's own run time (end - start as the server recorded them);
5. `make serve-stop`: `flows.service.stop` by the recorded pids, always, in a `finally`;
6. `database is locked` in SAGE_HOME/service/*.log (a count, per log) and the ledger's evaluations per run.

The worker polls every second (PREFECT_WORKER_QUERY_SECONDS=1, as the end-to-end test); `make serve` leaves Prefect's
default of 10 s, which adds up to 10 s of pick-up to each run. Figures go to results/service.md.

    python -m benchmarks.service [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "watch/watch-nightly"
LOCKED = "database is locked"
POLL_S = "1"
_COUNTS = re.compile(r"watch: (\d+) SAE\(s\) listed, (\d+) new")


# ---- the pure parts (tests/unit/benchmarks/test_service_bench.py) ---------------------------------------------------

def paired_ratios(numer: list[float], denom: list[float]) -> list[float]:
    """numer[i] / denom[i] for each round i: a ratio taken within its round, so drift between rounds cancels."""
    if len(numer) != len(denom) or not numer:
        raise ValueError(f"paired rounds need as many figures on each side, at least one: got {len(numer)} and "
                         f"{len(denom)}")
    if any(d <= 0 for d in denom):
        raise ValueError(f"a baseline of 0 s or less cannot divide: {denom}")
    return [n / d for n, d in zip(numer, denom, strict=True)]


def median_ratio(numer: list[float], denom: list[float]) -> float:
    return statistics.median(paired_ratios(numer, denom))


def watch_counts(log: str) -> tuple[int, int]:
    """(listed, new) from a watch flow run's log line `watch: N SAE(s) listed, M new`."""
    found = _COUNTS.search(log)
    if found is None:
        raise ValueError("no `watch: N SAE(s) listed, M new` line in the flow run's log")
    return int(found[1]), int(found[2])


def locked_counts(logs: Mapping[str, str]) -> dict[str, int]:
    """How often each log says `database is locked`."""
    return {name: text.count(LOCKED) for name, text in sorted(logs.items())}


def drop_prefect(env: Mapping[str, str]) -> dict[str, str]:
    """The environment less every PREFECT_* setting: none of the caller's profile, server or log levels reach the
    service."""
    return {k: v for k, v in env.items() if not k.startswith("PREFECT_")}


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def flow_run_times(run: Mapping) -> tuple[float | None, float | None]:
    """(seconds from scheduled to running: pick-up and the flow run's process start; seconds running: end - start),
    from the server's flow run record; None where a time is missing."""
    expected, start, end = (_when(run.get(k)) for k in ("expected_start_time", "start_time", "end_time"))
    pickup = (start - expected).total_seconds() if start and expected else None
    running = (end - start).total_seconds() if start and end else None
    return pickup, running


def median_or_none(xs: list[float | None]) -> float | None:
    """The median, or None when any figure is missing (a median of what is left would mislead)."""
    return None if not xs or any(x is None for x in xs) else statistics.median(xs)


def seconds(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def steps_line(steps: Mapping[str, float]) -> str:
    """`a 1.0 s, b 2.5 s; total 3.5 s` in the order the steps ran."""
    return ", ".join(f"{k} {seconds(v)}" for k, v in steps.items()) + f"; total {seconds(sum(steps.values()))}"


def rounds_line(xs: list[float], fmt: str = "{:.1f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


# ---- the run --------------------------------------------------------------------------------------------------------

@dataclass
class WatchRun:
    wall: float  # the `prefect deployment run --watch` command, start to exit
    pickup: float | None
    running: float | None
    listed: int
    new: int

    def line(self) -> str:
        return (f"{self.wall:.1f} s wall (scheduled -> running {seconds(self.pickup)}, flow run "
                f"{seconds(self.running)}); {self.listed} SAE(s) listed, {self.new} new")


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def flow_log(svc, run_id: str) -> str:
    """A flow run's log, oldest first (the service's API asks for its password: `flows.service.api` sends it)."""
    from flows.service import api

    logs = api(svc, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"})
    return "\n".join(entry["message"] for entry in logs)


def run_deployment(svc, env: dict[str, str], params: dict) -> WatchRun:
    """`prefect deployment run 'watch/watch-nightly' --params ... --watch`, as the README shows it; a run that does not
    complete stops the benchmark with its log's tail."""
    from flows.service import api, prefect_cli

    t0 = time.perf_counter()
    r = subprocess.run([prefect_cli(), "deployment", "run", DEPLOYMENT, "--params", json.dumps(params), "--watch",
                        "--watch-interval", "1", "--watch-timeout", "500"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    wall = time.perf_counter() - t0
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout)
    if run_id is None:
        raise RuntimeError(f"`prefect deployment run` made no flow run: {(r.stdout + r.stderr)[-2000:]}")
    run = api(svc, f"/flow_runs/{run_id[1]}")
    log = flow_log(svc, run_id[1])
    if run["state_type"] != "COMPLETED":
        raise RuntimeError(f"the watch run ended {run['state_type']}: {log[-3000:]}")
    return WatchRun(wall, *flow_run_times(run), *watch_counts(log))


def drop_changed_sae(zoo_home: Path, model: str, inbox: Path, k: int) -> Path:
    """Zoo SAE copied into the inbox with its decoder scaled by a factor no other drop uses: weights never scored."""
    from safetensors.torch import load_file, save_file

    from storage.home import SageHome

    src = next(p for p in sorted(SageHome(zoo_home).saes_root(model).iterdir()) if "hook_resid_post" in p.name)
    stage = inbox.parent / f".drop-{k}"  # written whole, then renamed in: a run never lists half an SAE
    shutil.copytree(src, stage)
    weights = load_file(stage / "sae_weights.safetensors")
    weights["W_dec"] = weights["W_dec"] * (1.5 + 0.25 * k)
    save_file(weights, stage / "sae_weights.safetensors")
    dst = inbox / f"lab-{src.name}-{k}"
    stage.rename(dst)
    return dst


def _expect(run: WatchRun, new: int, what: str) -> WatchRun:
    if run.new != new:
        raise RuntimeError(f"{what}: expected {new} new SAE(s), the run found {run.new} ({run.line()})")
    return run


def bench(home: Path, rounds: int) -> None:
    from flows import service
    from sage_core.config import WatchConfig, ZooConfig
    from storage.home import SageHome
    from storage.ledger import Ledger

    port = _free_port(set())
    svc = service.Service(home=SageHome(home), api_port=port, pg_port=_free_port({port}), say=lambda _: None)
    client_env = dict(os.environ) | {"PREFECT_API_URL": svc.api_url, "PREFECT_HOME": str(svc.dir / "prefect")}
    model = ZooConfig.tiny().model.name
    params = {"sources": [f"dir:{svc.inbox}"], "cfg": WatchConfig.tiny().model_dump(mode="json")}
    print(f"setup: fresh SAGE_HOME {home} (mode 0711), API port {svc.api_port}, PostgreSQL port {svc.pg_port}, the "
          f"caller's PREFECT_* dropped, the worker polling every {POLL_S} s (PREFECT_WORKER_QUERY_SECONDS={POLL_S}, "
          f"as the end-to-end test; `make serve` keeps Prefect's 10 s); {os.cpu_count()} CPU cores, "
          f"{'root: PostgreSQL runs as the postgres user' if os.geteuid() == 0 else 'not root'}")
    print("commands:\n"
          f"  make serve        = flows.service.start(Service(home, api_port, pg_port)), as `sage serve start` runs it\n"
          f"  zoo               = sage zoo build --tiny --home SAGE_HOME   (PREFECT_API_URL={svc.api_url})\n"
          f"  watch run         = prefect deployment run '{DEPLOYMENT}' --params '{{\"sources\": "
          f"[\"dir:SAGE_HOME/inbox\"], \"cfg\": <WatchConfig.tiny() as JSON>}}' --watch --watch-interval 1\n"
          f"  make serve-stop   = flows.service.stop(Service(home)), by the recorded pids")

    def n_evaluations() -> int:  # opened after a run: the service, not this benchmark, creates the ledger
        return Ledger.of(SageHome(home)).evaluations().height

    with_one: list[WatchRun] = []
    with_none: list[WatchRun] = []
    evaluations: list[int] = []
    stopped: list[str] = []
    t_stop = None
    try:
        t0 = time.perf_counter()
        steps = service.start(svc)
        up = time.perf_counter() - t0
        print(f"== 1. `make serve` (flows.service.start): {steps_line(steps)} ({up:.1f} s with the directories and "
              f"checks around the steps)")

        t0 = time.perf_counter()
        built = subprocess.run([str(Path(sys.executable).parent / "sage"), "zoo", "build", "--tiny", "--home",
                                str(home)], cwd=REPO, env=client_env, capture_output=True, text=True, timeout=900)
        if built.returncode != 0:
            raise RuntimeError(f"sage zoo build --tiny failed: {(built.stdout + built.stderr)[-2000:]}")
        print(f"== 2. the tiny zoo ({model}): `sage zoo build --tiny` {time.perf_counter() - t0:.1f} s, built before "
              f"the first watch run (no watch run below builds it)")

        drop_changed_sae(home, model, svc.inbox, 0)
        print("== 3. the first two runs of the deployment")
        first = _expect(run_deployment(svc, client_env, params), 1, "first run")
        evaluations.append(n_evaluations())
        print(f"  first watch run, one dropped SAE (cold: evaluate's upstream stages run for the first time in this "
              f"home): {first.line()}")
        second = _expect(run_deployment(svc, client_env, params), 0, "second run")
        evaluations.append(n_evaluations())
        print(f"  the next run, nothing new: {second.line()}")
        for k in range(1, rounds + 1):
            drop_changed_sae(home, model, svc.inbox, k)
            with_one.append(_expect(run_deployment(svc, client_env, params), 1, f"round {k}, new SAE"))
            evaluations.append(n_evaluations())
            with_none.append(_expect(run_deployment(svc, client_env, params), 0, f"round {k}, nothing new"))
            evaluations.append(n_evaluations())
    finally:
        t0 = time.perf_counter()
        stopped = service.stop(svc)
        t_stop = time.perf_counter() - t0
    report_rounds(with_one, with_none)
    print(f"== 5. `make serve-stop` (flows.service.stop): {t_stop:.1f} s, stopped {', '.join(stopped) or 'nothing'}")
    counts = locked_counts({p.name: p.read_text(errors="replace") for p in sorted(svc.dir.glob("*.log"))})
    print(f"== 6. `{LOCKED}` in SAGE_HOME/service/*.log: {sum(counts.values())} "
          f"({', '.join(f'{n} {c}' for n, c in counts.items())})")
    print(f"  ledger evaluations after each run (first, next, then new/nothing per round): "
          f"{', '.join(map(str, evaluations))}")
    # one more after each run that found a new SAE, none after a run that found nothing
    expected = [evaluations[0] + n for k in range(rounds + 1) for n in (k, k)]
    if evaluations != expected:
        raise RuntimeError(f"the ledger's evaluations after each run were {evaluations}, expected {expected}")
    if sum(counts.values()):
        raise RuntimeError(f"`{LOCKED}` in the service's logs: {counts}")


def report_rounds(with_one: list[WatchRun], with_none: list[WatchRun]) -> None:
    n = len(with_one)
    print(f"== 4. {n} paired round(s): drop an SAE with new weights, a watch run (evaluates it), a watch run "
          f"(finds nothing new)")
    for k, (one, none) in enumerate(zip(with_one, with_none, strict=True), 1):
        print(f"  round {k}: one new SAE {one.line()}")
        print(f"  {'':>7}  nothing new {none.line()}")
    walls = paired_ratios([r.wall for r in with_none], [r.wall for r in with_one])
    print(f"  THE FIGURE: a watch run that finds nothing new / a watch run that evaluates one new SAE (baseline, same "
          f"round): {median_ratio([r.wall for r in with_none], [r.wall for r in with_one]):.2f}x, median of {n} paired "
          f"round(s) (rounds {rounds_line(walls, '{:.2f}')}), by the wall of `prefect deployment run --watch`")
    if all(r.running is not None for r in with_one + with_none):
        own = paired_ratios([r.running for r in with_none], [r.running for r in with_one])
        print(f"  by the flow runs' own run time (end - start on the server): {statistics.median(own):.2f}x "
              f"(rounds {rounds_line(own, '{:.2f}')})")
    for what, runs in (("one new SAE", with_one), ("nothing new", with_none)):
        print(f"  {what}: median wall {statistics.median(r.wall for r in runs):.1f} s (rounds "
              f"{rounds_line([r.wall for r in runs])}), flow run {seconds(median_or_none([r.running for r in runs]))}, "
              f"scheduled -> running {seconds(median_or_none([r.pickup for r in runs]))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds (new SAE, then nothing new)")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: give 1 or more")
    # the service's processes take their environment from this one (Service.env copies os.environ)
    kept = drop_prefect(os.environ)
    os.environ.clear()
    os.environ.update(kept | {"PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_WORKER_QUERY_SECONDS": POLL_S})
    t0 = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="sage-bench-serve-"))
    try:
        home.chmod(0o711)
        bench(home, args.rounds)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("service"):
        main()
