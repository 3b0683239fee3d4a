"""Capture tasks: create (or resume) an activation store, fill its chunks in shards, seal it; and the engine that
fills them.

`capture_chunks` is the loop every path shares (the capture tasks, the CLI, the benchmarks): read a chunk's prompts
from the store, compute its activations (`sage_core.model.capture.capture_chunk`), write them through the store
(`storage.activations`), the write of one chunk beside the next chunk's forward pass. Where a store lies and what it
holds is `storage.capture`. The tasks take and return typed references (`storage.refs.StoreRef`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from prefect import task

from sage_core.model.capture import CaptureRequest, capture_chunk, chunk_buffer
from storage import capture as cap
from storage.activations import ActivationStore
from storage.home import SageHome
from storage.refs import DatasetRef, ModelRef, StoreRef
from tasks import loaded, progress
from tasks.common import UNCACHED, log, stage_options, task_key

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer


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
        return capture_chunks(s, m, request.batch_size, share, on_chunk=lambda _i: progress.advance("capture"))


@task(name="finalize-capture", task_run_name="finalize-capture {dataset.task}", **UNCACHED)
def finalize_capture(store: StoreRef, dataset: DatasetRef, shards: list[int], home: str) -> StoreRef:
    """Seal the store, or open a sealed one verified (every chunk's size and checksum): never cached, so a store whose
    marker was deleted is sealed again and a damaged one fails here, named as the store's fault, before any scoring.
    `shards`: the chunks each shard wrote (the shards' results, so this runs after them)."""
    sealed = cap.seal(SageHome(home), store)
    log().info(f"store of {dataset.task}: {sum(shards)} of {sealed.n_chunks} chunks captured by this run")
    return sealed


# -- the engine ------------------------------------------------------------------------------------------------------
WriteSchedule = Literal["background", "io", "in_turn"]


def capture_chunks(
    store: ActivationStore,
    model: HookedTransformer,
    batch_size: int,
    chunks: list[int] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    schedule: WriteSchedule | None = None,
) -> int:
    """Fill the given (default: all) chunks not yet done; returns how many were written.

    `schedule`, how a chunk's write meets the next chunk's forward pass (None: `write_schedule(model)` picks):
    - "background": compress and write chunk i on a worker thread while chunk i+1 is computed;
    - "io": compress chunk i in turn, write its files on a worker thread while chunk i+1 is computed;
    - "in_turn": compress and write, then compute the next chunk.
    """
    bad = [i for i in chunks or () if not 0 <= i < store.n_chunks]
    if bad:
        raise ValueError(f"chunks {bad} do not exist: {store.path} has chunks 0 to {store.n_chunks - 1}")
    done = store.done_chunks()
    todo = [i for i in (range(store.n_chunks) if chunks is None else chunks) if i not in done]
    g = store.group
    hooks = store.hooks
    schedule = schedule or write_schedule(model)
    # chunk buffers are allocated once and reused (fresh pages per chunk cost more than the copy). In the background
    # schedule at most one write is in flight and chunk k fills buffer k % 2, whose write (chunk k - 2) finished
    # before chunk k - 1 was submitted; the other schedules are done with the buffer once the chunk is encoded
    buffers: list[dict[str, np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for k, i in enumerate(todo):
            start, stop = store.chunk_range(i)
            slot = k % 2 if schedule == "background" else 0
            if len(buffers) <= slot:
                buffers.append({h: chunk_buffer((store.chunk_prompts, *g[h].shape[1:]), model) for h in hooks})
            arrays = {h: buffers[slot][h][: stop - start] for h in hooks}
            compute_chunk(store, model, i, arrays, batch_size)
            encoded = store.encode_chunk(i, arrays) if schedule == "io" else None
            if pending is not None:
                pending.result()  # re-raises a write error before more work is done
            if schedule == "background":
                pending = writer.submit(store.write_chunk, i, arrays, file_writers(schedule))
            elif encoded is not None:  # io
                pending = writer.submit(store.write_encoded, i, encoded)
            else:  # in turn (or io over a codec chain SAGE does not encode itself)
                store.write_chunk(i, arrays)
                if on_chunk:
                    on_chunk(i)
                continue
            if on_chunk:
                pending.add_done_callback(lambda f, i=i: f.exception() is None and on_chunk(i))
        if pending is not None:
            pending.result()
    return len(todo)


def compute_chunk(
    store: ActivationStore, model: HookedTransformer, i: int, arrays: dict[str, np.ndarray], batch_size: int
) -> None:
    """Fill `arrays` (a float32 buffer per hook, as long as chunk `i`) with the activations of chunk `i`'s prompts
    (`capture_chunk`). The prompts come from the prompt table attached to the store, not from its `tokens` array,
    which a damaged chunk may have damaged too."""
    rows = store.prompt_chunk(i)
    capture_chunk(model, rows["tokens"], rows["length"], rows.get("role_pos"), arrays, batch_size)


def file_writers(schedule: WriteSchedule) -> int:
    """Threads writing one chunk's files: several when cores are spare (the background schedule), else one, so the
    writes never take a core from the forward pass."""
    return max(1, min(8, (os.cpu_count() or 1) // 2)) if schedule == "background" else 1


def write_schedule(model: HookedTransformer) -> WriteSchedule:
    """"background" when the model runs on an accelerator or torch leaves a CPU core idle; otherwise "io". When
    torch's threads fill every core, compressing beside them can stall torch's parallel regions at each barrier: on 2
    cores the background schedule ran a GPT-2-small-shaped capture at 1.41-1.77x the bare forward pass against
    1.11-1.61x in turn (paired runs in one process). Writing only the files beside it cost least or near least in
    paired rounds (`benchmarks/capture --compare-schedules`): medians io 1.36x, in turn 1.47x, background 1.57x over 4
    rounds at 192 prompts; io 1.30x, in turn 1.33x, background 1.27x over 5 rounds at 384 prompts, where the three
    are within this machine's noise of each other."""
    if model.cfg.device is not None and torch.device(model.cfg.device).type != "cpu":
        return "background"
    return "background" if (os.cpu_count() or 1) > torch.get_num_threads() + 1 else "io"
