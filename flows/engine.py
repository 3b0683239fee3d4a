"""Where a command's tasks run: `--cluster threads | local[:N] | tcp://HOST:PORT`, and on which devices.

- `threads`: the flow's own process, a pool of threads (one per device, at least two).
- `local[:N]`: a Dask cluster of N worker processes on this machine, started for the command and stopped after it.
  With GPUs: one worker per GPU, each pinned to its GPU (dask-cuda's LocalCUDACluster where it is installed, else
  CUDA_VISIBLE_DEVICES per worker); its tasks then run on "cuda", the one GPU the worker sees.
- `tcp://HOST:PORT`: an existing Dask scheduler (dask-jobqueue on SLURM, dask-kubernetes, `dask scheduler`). Its
  workers need SAGE installed and SAGE_HOME on a filesystem they all see; a task's device spec is resolved on the
  worker that runs it.

Every flow stays the one orchestrator: the engine only gives each flow a Prefect task runner (prefect-dask's
`DaskTaskRunner` connected to the command's cluster), so Prefect's caching, retries and UI work the same on every
engine. A Dask worker that dies mid-task loses nothing: the scheduler runs its tasks again elsewhere (or on the worker
its nanny starts in its place: `tasks.remote`), and every task writes its output atomically under a content-addressed
key. Worker processes forward their progress to the flow's process (`tasks.progress`) through Dask's event topics.

Workers on this machine use the flow's Prefect API (the CLI's temporary server): a worker with none would start a
temporary server of its own at its first task run (tens of seconds), which a killed worker leaves running.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from flows.cluster_spec import ClusterError, ClusterSpec, parse_cluster, probe, unreachable
from flows.prefect_internals import pickled_by_reference, temporary_server_url
from sage_core.model.devices import resolve_devices
from tasks import loaded, progress, remote

PROGRESS_TOPIC = "sage-progress"
CONNECT_TIMEOUT_S = 10


def _gpu_indices(devices: tuple[str, ...]) -> list[int]:
    return [int(d.split(":")[1]) for d in devices if d.startswith("cuda:")]


def _loads() -> dict[str, int]:
    """This process's reads so far (run on each worker)."""
    return dict(loaded.LOADS)


def _peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: Linux's VmHWM (ru_maxrss of a process started by fork and exec
    counts its parent's peak too: a Dask worker would report the flow process's), else ru_maxrss."""
    import resource

    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _forward_progress(dask_worker) -> None:
    """On a worker: every progress change goes to the flow's process as a Dask event (not on a worker thread inside
    the flow's process itself: an in-process cluster shares its progress)."""
    if not progress.expecting_remote():
        progress.forward_to(lambda message: dask_worker.log_event(PROGRESS_TOPIC, message))


@dataclass
class Engine:
    """The open engine of a command: a task runner for every flow, the device each unit runs on, where an SAE's units
    go, and how many times each thing was read from disk."""

    spec: ClusterSpec
    devices: tuple[str, ...]  # as the flow's process resolves the device spec (threads and local)
    address: str | None = None
    pinned: bool = False  # one GPU per worker (local with GPUs)
    client: Any = None
    workers: list[str] = field(default_factory=list)
    threads: int = 2  # `threads`: the pool's size (at least one per device)

    @property
    def distributed(self) -> bool:
        return self.client is not None

    @property
    def n_workers(self) -> int:
        """Worker processes doing the work (the flow's process itself on `threads`)."""
        return len(self.client.scheduler_info(n_workers=-1)["workers"]) if self.distributed else 1

    def task_runner(self):
        """A fresh task runner on this engine (one per flow run: Prefect enters and exits it with the run)."""
        if not self.distributed:
            from prefect.task_runners import ThreadPoolTaskRunner

            return ThreadPoolTaskRunner(max_workers=self.parallel)
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=self.address)

    def flow(self, f):
        """The flow `f` with its tasks on this engine."""
        return f.with_options(task_runner=self.task_runner())

    def unit_devices(self, spec: str, n: int) -> list[str]:
        """The device spec each of `n` units gets: round-robin over this process's devices on `threads`; the worker's
        own GPU when workers are pinned; on a remote cluster the spec itself, resolved where the unit runs."""
        if self.spec.kind == "remote":
            return [spec] * n
        devices = resolve_devices(spec)
        if self.pinned and any(d.startswith("cuda") for d in devices):
            return ["cuda"] * n
        return [devices[i % len(devices)] for i in range(n)]

    def assign(self, groups: list[str]) -> dict[str, str | None]:
        """A worker for each group (an SAE's spec): sorted, then cut into one contiguous, even share per worker, so
        SAEs whose specs sort together (one hook's) meet on one worker, which keeps what they share, and every
        worker gets a share. None on threads."""
        if not self.distributed or not self.workers:
            return {g: None for g in groups}
        order = sorted(set(groups))
        n = len(self.workers)
        return {g: self.workers[i * n // len(order)] for i, g in enumerate(order)}

    @property
    def parallel(self) -> int:
        """Units run at once in this process (`threads`: the pool's size)."""
        return max(self.threads, len(self.devices))

    @contextmanager
    def per_sae_runner(self) -> Iterator[Any]:
        """For the tasks dispatched once per SAE (`tasks.remote`): on a cluster, a thread pool in the flow's process
        whose task runs send their bodies to the workers (two in flight per worker, so none waits between SAEs);
        None on threads (the flow's own runner)."""
        if not self.distributed:
            yield None
            return
        from prefect.task_runners import ThreadPoolTaskRunner

        with ThreadPoolTaskRunner(max_workers=2 * max(1, len(self.workers))) as runner:
            yield runner

    def torch_threads(self) -> dict[str, int | str]:
        """Torch's intra-op threads in each process doing the work (`threads`: shared by the SAEs scored at once)."""
        if self.distributed:
            return dict(self.client.run(torch_threads))
        return {"flow": f"{os.cpu_count()} cores / SAEs scored at once (tasks.remote.sharing_cores)"}

    def loads(self) -> Counter[str]:
        """Reads from disk so far, summed over the flow's process and every live worker (kind -> count)."""
        total = Counter(_loads())
        if self.distributed:
            for counts in self.client.run(_loads).values():
                total.update(counts)
        return total

    def peak_memory_mib(self) -> dict[str, float]:
        """Peak resident memory of each process doing the work (worker address, or "flow")."""
        if not self.distributed:
            return {"flow": _peak_rss_mib()}
        return dict(self.client.run(_peak_rss_mib))

    def worker_pids(self) -> dict[str, int]:
        return dict(self.client.run(os.getpid)) if self.distributed else {"flow": os.getpid()}


_current: Engine | None = None
_lock = threading.Lock()


def current() -> Engine:
    """The engine opened by this command; a deployment's flow run (none opened) runs on threads."""
    global _current
    with _lock:
        if _current is None:
            _current = Engine(ClusterSpec("threads"), ("cpu",))
        return _current


def cpu_share(parallel: int) -> int:
    """Torch threads for each of `parallel` CPU users of this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def prefect_api_url(start: bool) -> str | None:
    """The Prefect API this process uses: PREFECT_API_URL, else the temporary server Prefect runs for it (started now
    if `start`; the CLI starts it before any engine opens), else None."""
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    return temporary_server_url(start)


def _this_host() -> set[str]:
    """This machine's addresses (every interface's, loopback included)."""
    import psutil

    return {"localhost"} | {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def on_this_host(workers: list[str], here: set[str]) -> bool:
    """Every worker address (`tcp://HOST:PORT`) names a host in `here` (none: False)."""
    hosts = {w.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]") for w in workers}
    return bool(hosts) and all(h in here or h.startswith("127.") for h in hosts)


@contextmanager
def _workers_share_prefect_api(url: str | None) -> Iterator[None]:
    """Task runs sent to the workers carry this process's Prefect settings (prefect-dask): with the API URL among
    them, a worker starts no temporary server of its own."""
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _local_cluster(n: int | None, devices: tuple[str, ...], api_url: str | None = None):
    """A cluster of worker processes on this machine, bound to 127.0.0.1, no dashboard; (cluster, pinned). Its workers
    use the Prefect API at `api_url` (none started of their own, which a killed worker would leave behind)."""
    extra = {"PREFECT_API_URL": api_url} if api_url else {}
    gpus = _gpu_indices(devices)
    if gpus and n is not None and n != len(gpus):
        raise ClusterError(f"--cluster local:{n} with {len(gpus)} GPU(s): a local cluster runs one worker per GPU; "
                           f"use --cluster local, or --device cpu for {n} CPU workers")
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:
            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=gpus, threads_per_worker=1, host="127.0.0.1",
                                    dashboard_address="127.0.0.1:0", silence_logs=40, env=extra), True
    from distributed import Nanny, Scheduler, SpecCluster

    count = len(gpus) if gpus else (n or max(1, (os.cpu_count() or 2) // 2))
    # each CPU worker's torch threads are set once it runs (`open_engine`): N workers share the cores
    envs = [{"CUDA_VISIBLE_DEVICES": str(g), **extra} for g in gpus] if gpus else [dict(extra) for _ in range(count)]
    workers = {i: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "env": env, "silence_logs": 40}}
               for i, env in enumerate(envs)}
    # no dashboard; its HTTP endpoints (health, metrics) still listen: on 127.0.0.1 and a free port, never :8787 on
    # every interface
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                               "dashboard_address": "127.0.0.1:0"}}
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap threshold: every large tensor
    # is then mapped and zeroed anew, 10-15% of a CPU worker's torch time (benchmarks/scale.py, heavy units)
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return SpecCluster(workers=workers, scheduler=scheduler, name="sage", silence_logs=40), bool(gpus)


def _connect(address: str):
    from distributed import Client

    probe(address, timeout=CONNECT_TIMEOUT_S)  # a host not known, or no one listening: at once, not after retries
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise unreachable(address, type(exc).__name__) from None


def check_cluster(cluster: str, device: str) -> ClusterSpec:
    """Every check that needs no cluster: the engine's form, and the devices where the flow's process decides them."""
    spec = parse_cluster(cluster)
    if spec.kind != "remote":
        resolve_devices(device)  # a DeviceError is a ValueError: one line
    return spec


def warm_code_versions() -> None:
    """Key every stage's code now, on one thread: task threads then find it computed (the parser it takes is not
    thread-safe on CPython 3.11, and anything else parsing at that moment would race it). Read from the sources:
    nothing is imported."""
    from storage.hashing import ROOT, stage_code_version

    for path in sorted((ROOT / "tasks").glob("*.py")):
        if path.stem != "__init__":
            stage_code_version(f"tasks.{path.stem}")


@contextmanager
def activated(eng: Engine) -> Iterator[Engine]:
    """Make an engine that is already open the one flows use for the block (a benchmark comparing engines keeps
    several open), the per-SAE work (`tasks.remote`) going to its workers or staying here; the previous one is current
    again afterwards."""
    global _current
    with _lock:
        previous, _current = _current, eng
    try:
        with remote.dispatching_to(eng.client if eng.distributed else None):
            yield eng
    finally:
        with _lock:
            _current = previous


@contextmanager
def open_engine(cluster: str = "threads", device: str = "cpu", threads: int = 2) -> Iterator[Engine]:
    """The engine every flow this command runs uses, open for the block; a scheduler that cannot be reached fails here,
    in one line, before any work. A local cluster is stopped at the end (a remote one is left running). `threads`:
    the thread pool's size on `threads`."""
    spec = check_cluster(cluster, device)
    devices = resolve_devices(device) if spec.kind != "remote" else ()
    warm_code_versions()
    if spec.kind == "threads":
        eng = Engine(spec, devices, threads=max(2, threads))
        cluster_obj = api_url = None
    else:
        # the scheduler's and nannies' INFO lines (workers joining, leaving) would bury the run's own progress
        logging.getLogger("distributed").setLevel(max(logging.getLogger("distributed").getEffectiveLevel(),
                                                      logging.WARNING))
        api_url = prefect_api_url(start=spec.kind == "local")
        cluster_obj, pinned = (_local_cluster(spec.n_workers, devices, api_url) if spec.kind == "local"
                               else (None, False))
        address = cluster_obj.scheduler_address if cluster_obj is not None else spec.address
        eng = Engine(spec, devices, address=address, pinned=pinned, client=_connect(address))
        pickled_by_reference()
    relay = _ProgressRelay(eng.client) if eng.distributed else None
    try:
        shared_api = None
        if eng.distributed:
            eng.client.wait_for_workers(1, timeout=300)
            eng.workers = sorted(eng.client.scheduler_info(n_workers=-1)["workers"])
            eng.client.register_worker_callbacks(_forward_progress)
            if spec.kind == "local" and not pinned:  # Dask's nannies start torch on 1 thread: give each its share
                eng.client.register_worker_callbacks(partial(_set_torch_threads, cpu_share(len(eng.workers))))
            # a remote cluster's workers on this machine (`dask worker` here) can reach the temporary server too
            if api_url and (spec.kind == "local" or on_this_host(eng.workers, _this_host())):
                shared_api = api_url
        with _workers_share_prefect_api(shared_api), activated(eng):
            yield eng
    finally:
        if relay is not None:
            relay.stop()
        if eng.client is not None:
            eng.client.close()
        if cluster_obj is not None:
            # a worker whose Prefect services still flush at exit is killed after a few seconds: expected, not news
            logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
            cluster_obj.close()


class _ProgressRelay:
    """Applies the workers' progress events in this process, on a thread of its own (the Dask client's event loop,
    where they arrive, must not make the blocking calls a progress update may make to Prefect's API)."""

    def __init__(self, client) -> None:
        self.client = client
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="sage-progress-relay", daemon=True)
        self.thread.start()
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: self.queue.put(event[1]))
        progress.expect_remote(True)

    def _run(self) -> None:
        while True:
            message = self.queue.get()
            if message is None:
                return
            progress.apply(message)

    def stop(self) -> None:
        progress.expect_remote(False)
        try:
            self.client.unsubscribe_topic(PROGRESS_TOPIC)
        finally:
            self.queue.put(None)
            self.thread.join(timeout=5)
