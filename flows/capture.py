"""Flow `capture`: prompt datasets -> activation stores (one per task), each filled by shards mapped in parallel.

Capturing once per (model, dataset, request) is what lets every later stage score any number of SAEs without another
forward pass.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from sage_core.capture import CaptureRequest
from sage_core.config import ZooConfig
from storage.hashing import dir_hash
from storage.home import SageHome
from storage.zoo import model_is_complete
from tasks import capture as ct
from tasks.zoo import make_dataset


def default_hooks(n_layers: int) -> tuple[str, ...]:
    """Every place the later stages look at: resid_pre 0, and per layer resid_post, attn_out, mlp_out, attn.hook_z."""
    hooks = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        hooks += [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_attn_out",
                  f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_z"]
    return tuple(hooks)


@flow(name="capture", task_runner=ThreadPoolTaskRunner(max_workers=2))
def capture(
    request: CaptureRequest,
    cfg: ZooConfig = ZooConfig(),
    home: str | None = None,
    n_shards: int = 2,
) -> list[dict[str, Any]]:
    """Capture `request` for every task of `cfg` on the zoo model `cfg.model.name` (build it first)."""
    h = SageHome(home)
    name = cfg.model.name
    if not model_is_complete(h.model_dir(name)):
        raise FileNotFoundError(f"no built model {name!r} under {h.root}; run `sage zoo build` first")
    root = str(h.root)
    model = ct.model_manifest(h, name)
    tok = {"path": str(h.tokenizer_dir(name)), "hash": dir_hash(h.tokenizer_dir(name))}
    datasets = make_dataset.map(list(cfg.tasks), unmapped(cfg), unmapped(tok), unmapped(root))
    out = []
    for ds in datasets:
        prep = ct.prepare_capture(model, {"path": ds.result()["path"], "hash": ds.result()["hash"]}, request, root)
        shards = ct.capture_shard.map(unmapped(prep), unmapped(model), unmapped(request), list(range(n_shards)),
                                      unmapped(n_shards))
        out.append({"task": ds.result()["task"], **ct.finalize_capture(prep, [s.result() for s in shards])})
    return out
