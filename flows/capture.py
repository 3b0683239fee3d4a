"""Flow `capture`: prompt datasets -> activation stores (one per task), each filled by shards mapped in parallel.

Capturing once per (model, dataset, request) is what lets every later stage score any number of SAEs without another
forward pass.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from sage_core.config import ZooConfig
from sage_core.model.capture import CaptureRequest
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.zoo import model_is_complete
from tasks import capture as ct
from tasks.common import ManifestSerializer, in_home
from tasks.zoo import make_dataset


@flow(name="capture", task_runner=ThreadPoolTaskRunner(max_workers=2), result_serializer=ManifestSerializer())
def capture(
    request: CaptureRequest,
    cfg: ZooConfig = ZooConfig(),
    home: str | None = None,
    n_shards: int = 2,
    devices: tuple[str, ...] = ("cpu",),
) -> list[dict[str, Any]]:
    """Capture `request` for every task of `cfg` on the zoo model `cfg.model.name` (build it first).

    Shard k runs on `devices[k % len(devices)]` (names from `sage_core.devices.resolve_devices`): give as many shards
    as GPUs, and a task runner with as many workers, to keep every GPU busy."""
    h = SageHome(home)
    h.ensure_writable()
    name = cfg.model.name
    if not model_is_complete(h.model_dir(name)):
        raise FileNotFoundError(f"no built model {name!r} under {h.root}; run `sage zoo build` first")
    root = str(h.root)
    model = ct.model_manifest(h, name)
    tok = {"path": h.relative(h.tokenizer_dir(name)), "hash": dir_hash(h.tokenizer_dir(name))}
    datasets = in_home(make_dataset, h).map(list(cfg.tasks), unmapped(cfg), unmapped(tok), unmapped(root))
    out = []
    for ds in datasets:
        prep = in_home(ct.prepare_capture, h)(model, {"path": ds.result()["path"], "hash": ds.result()["hash"]},
                                              request, root)
        shards = ct.capture_shard.map(unmapped(prep), unmapped(model), unmapped(request), list(range(n_shards)),
                                      unmapped(n_shards), unmapped(root),
                                      [devices[k % len(devices)] for k in range(n_shards)])
        out.append({"task": ds.result()["task"], **ct.finalize_capture(prep, [s.result() for s in shards], root)})
    return out
