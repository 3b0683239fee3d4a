"""Capture tasks: create (or resume) an activation store, fill its chunks in shards, seal it.

The engine (prompts in, chunks streamed into the store) is `storage.capture`; the forward pass is
`sage_core.model.capture`. These tasks take and return typed references (`storage.refs.StoreRef`).
"""

from __future__ import annotations

from functools import partial

from prefect import task

from sage_core.model.capture import CaptureRequest
from storage import capture as cap
from storage.home import SageHome
from storage.refs import DatasetRef, ModelRef, StoreRef
from tasks import loaded, progress
from tasks.common import UNCACHED, log, stage_options, task_key


def store_whole(ref: StoreRef, home: SageHome, _key: str) -> str | None:
    """The store is finished and whole. Otherwise the task reruns and resumes it, which drops the records of damaged
    chunks, so the shards recapture exactly those (a cache hit would skip them)."""
    return cap.store_problem(home, ref)


@task(name="prepare-capture", task_run_name="prepare-capture {dataset.task}", **stage_options(store_whole))
def prepare_capture(model: ModelRef, dataset: DatasetRef, request: CaptureRequest, home: str) -> StoreRef:
    """Create the store (or find it finished, or unfinished to resume); its `hash` stays empty until it is sealed.

    The store's address holds the stage key (model and prompts by content, the request, the capture code)."""
    key = task_key(prepare_capture, locals())  # first line: locals() are the parameters
    h = SageHome(home)
    return cap.prepare_store(h, model, dataset, request, key, partial(loaded.model, h, model))


@task(name="capture-shard", task_run_name="capture {dataset.task} shard {shard}/{n_shards}", **UNCACHED)
def capture_shard(store: StoreRef, model: ModelRef, dataset: DatasetRef, request: CaptureRequest, shard: int,
                  n_shards: int, home: str, device: str = "cpu") -> int:
    """Fill chunks shard, shard + n_shards, ... of the store with the model on `device`; resumable, so never cached.
    Returns how many chunks it wrote; each chunk of its share advances the "capture" progress stage (those already
    there at once).

    The device is not part of the store's address: a GPU and the CPU give the same values within float tolerance
    (not bit for bit), so a store resumed on another device is whole but not bitwise equal to one captured on one."""
    h = SageHome(home)
    share = list(range(shard, store.n_chunks, n_shards))
    s = cap.unfinished(h, store)
    if s is None:
        progress.advance("capture", len(share))
        return 0
    progress.advance("capture", len(set(share) & s.done_chunks()))
    with loaded.model(h, model, device) as m:
        cap.attach_prompt_table(s, h, dataset, m)
        return cap.capture_chunks(s, m, request.batch_size, share, on_chunk=lambda _i: progress.advance("capture"))


@task(name="finalize-capture", task_run_name="finalize-capture {dataset.task}", **UNCACHED)
def finalize_capture(store: StoreRef, dataset: DatasetRef, shards: list[int], home: str) -> StoreRef:
    """Seal the store, or open a sealed one verified (every chunk's size and checksum): never cached, so a store whose
    marker was deleted is sealed again and a damaged one fails here, named as the store's fault, before any scoring.
    `shards`: the chunks each shard wrote (the shards' results, so this runs after them)."""
    sealed = cap.seal(SageHome(home), store)
    log().info(f"store of {dataset.task}: {sum(shards)} of {sealed.n_chunks} chunks captured by this run")
    return sealed
