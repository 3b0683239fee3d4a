"""Flow `capture`: prompt datasets -> activation stores (one per task), each filled by shards mapped in parallel.

Capturing once per (model, dataset, request) is what lets every later stage score any number of SAEs without another
forward pass.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from sage_core.config import ZooConfig
from sage_core.model.capture import CaptureRequest
from storage.home import SageHome
from storage.refs import StoreRef
from tasks import capture as ct
from tasks import progress
from tasks.common import ManifestSerializer, in_home
from tasks.zoo import find_model, make_dataset


@flow(name="capture", flow_run_name="capture {cfg.model.name}", task_runner=ThreadPoolTaskRunner(max_workers=2),
      result_serializer=ManifestSerializer())
def capture(
    request: CaptureRequest,
    cfg: ZooConfig = ZooConfig(),
    home: str | None = None,
    n_shards: int = 2,
    devices: tuple[str, ...] = ("cpu",),
) -> dict[str, StoreRef]:
    """Capture `request` for every task of `cfg` on the zoo model `cfg.model.name` (build it first); returns each
    task's sealed store.

    Shard k runs on `devices[k % len(devices)]` (names from `sage_core.model.devices.resolve_devices`; on a local
    cluster pinned to GPUs, on its worker's GPU): give as many shards as GPUs, and as many workers, to keep every GPU
    busy."""
    h = SageHome(home)
    h.ensure_writable()
    root = str(h.root)
    model, tok = find_model(cfg.model.name, root)
    datasets = in_home(make_dataset, h).map(list(cfg.tasks), unmapped(cfg), unmapped(tok), unmapped(root)).result()
    stores = [f.result() for f in [in_home(ct.prepare_capture, h).submit(model, ds, request, root) for ds in datasets]]
    progress.begin("capture", sum(s.n_chunks for s in stores))
    try:
        out = {}
        for ds, store in zip(datasets, stores, strict=True):
            shards = ct.capture_shard.map(unmapped(store), unmapped(model), unmapped(ds), unmapped(request),
                                          list(range(n_shards)), unmapped(n_shards), unmapped(root),
                                          engine.current().unit_devices(",".join(devices), n_shards))
            out[ds.task] = ct.finalize_capture(store, ds, shards, root)
    finally:
        progress.end("capture")
    return out
