"""The capture engine: stream a model's activations on a prompt table into an activation store, chunk by chunk.

`capture_chunks` is the loop every path shares (the capture tasks, the CLI, the benchmarks): read the prompts, run
`sage_core.model.capture.capture_batch` (the forward pass), write through `storage.activations`. The functions at the
end address stores by typed reference (`storage.refs.StoreRef`): where a store lies, its identity, sealing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from transformer_lens import HookedTransformer

from sage_core.model.capture import (
    CaptureRequest,
    capture_batch,
    check_hooks,
    chunk_prompts,
    dim_names,
    hook_trailing_shapes,
)
from sage_core.model.transformer import pad_sequences
from storage.activations import ActivationStore
from storage.atomic import StoreError
from storage.datasets import read_prompts
from storage.hashing import file_hash, stable_hash, stage_code_version
from storage.home import SageHome
from storage.refs import DatasetRef, ModelRef, StoreRef


def prompt_arrays(df: pl.DataFrame, pad_id: int) -> dict[str, Any]:
    """Padded tokens, lengths, ids and (if the table has roles) role names and positions of a prompt table."""
    tokens = pad_sequences(df["tokens"].to_list(), pad_id).numpy().astype(np.int32)
    roles = [c.removeprefix("pos_") for c in df.columns if c.startswith("pos_")]
    return {
        "tokens": tokens,
        "lengths": df["tokens"].list.len().to_numpy().astype(np.int32),
        "prompt_ids": df["prompt_id"].to_list(),
        "roles": roles,
        "role_pos": df.select([f"pos_{r}" for r in roles]).to_numpy().astype(np.int32) if roles else None,
    }


def open_or_create_store(
    path, model: HookedTransformer, df: pl.DataFrame, request: CaptureRequest, identity: dict[str, str]
) -> ActivationStore:
    """Validate the request against the model and prompts, then create the store or reopen its unfinished copy."""
    check_hooks(model, request.hooks)
    pa = prompt_arrays(df, model.tokenizer.pad_token_id if model.tokenizer else 0)
    if request.positions == "roles" and not pa["roles"]:
        raise ValueError("positions='roles' needs a prompt table with pos_<role> columns; use positions='all'")
    if pa["tokens"].shape[1] > model.cfg.n_ctx:
        raise ValueError(f"prompts of {pa['tokens'].shape[1]} tokens exceed the model's n_ctx={model.cfg.n_ctx}")
    shapes = hook_trailing_shapes(model, request.hooks)
    n_pos = len(pa["roles"]) if request.positions == "roles" else pa["tokens"].shape[1]
    itemsize = 4 if request.dtype == "float32" else 2
    per_prompt = max(n_pos * int(np.prod(s)) * itemsize for s in shapes.values())
    return ActivationStore.create_or_resume(
        path,
        attrs={**identity, "model_name": model.cfg.model_name, "request": request.model_dump(mode="json"),
               "code_version": stage_code_version(__name__)},
        hook_shapes={h: (s, dim_names(s)) for h, s in shapes.items()},
        tokens=pa["tokens"], lengths=pa["lengths"], prompt_ids=pa["prompt_ids"],
        chunk_prompts=chunk_prompts(per_prompt, request.chunk_mb, request.batch_size), dtype=request.dtype,
        compression=request.compression,
        roles=pa["roles"] if request.positions == "roles" else None,
        role_pos=pa["role_pos"] if request.positions == "roles" else None,
    )


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
    """Fill `arrays` (a float32 buffer per hook, as long as chunk `i`) with the activations of chunk `i`'s prompts, in
    forward batches of `batch_size`; positions past a prompt's length are zeroed. The prompts come from the prompt
    table attached to the store, not from its `tokens` array, which a damaged chunk may have damaged too."""
    start, stop = store.chunk_range(i)
    rows = store.prompt_chunk(i)
    tokens = torch.as_tensor(rows["tokens"], dtype=torch.long)
    roles = "role_pos" in rows
    role_pos = torch.as_tensor(rows["role_pos"], dtype=torch.long) if roles else None
    hooks = list(arrays)
    for b in range(0, stop - start, batch_size):
        sl = slice(b, b + batch_size)
        capture_batch(model, tokens[sl], hooks, role_pos[sl] if roles else None,
                      out={h: a[sl] for h, a in arrays.items()})
    if not roles:  # zero the padding: deterministic, and it compresses to nothing
        pad = np.arange(tokens.shape[1])[None, :] >= rows["length"][:, None]
        for a in arrays.values():
            a[pad] = 0


def file_writers(schedule: WriteSchedule) -> int:
    """Threads writing one chunk's files: several when cores are spare (the background schedule), else one, so the
    writes never take a core from the forward pass."""
    return max(1, min(8, (os.cpu_count() or 1) // 2)) if schedule == "background" else 1


def chunk_buffer(shape: tuple[int, ...], model: HookedTransformer) -> np.ndarray:
    """A float32 host buffer for one chunk of one hook; page-locked when the model runs on a CUDA GPU, where copies
    from the device into pageable memory go through a staging buffer at a fraction of the link's speed."""
    if torch.device(model.cfg.device or "cpu").type == "cuda":
        return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
    return np.empty(shape, np.float32)


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


def attach_prompt_table(store: ActivationStore, home: SageHome, dataset: DatasetRef, model: HookedTransformer) -> None:
    """Give `store` the prompt table it was created from (read whole, and the very table: its hash is the store's)."""
    path = home.at(dataset)
    if file_hash(path) != dataset.hash:
        raise StoreError(f"{path} is not the prompt table {store.path} was captured from (its hash changed); "
                         f"rerun the capture flow, which rebuilds both")
    pa = prompt_arrays(read_prompts(path), model.tokenizer.pad_token_id if model.tokenizer else 0)
    store.attach_prompts(pa["tokens"], pa["lengths"], pa["role_pos"] if "role_pos" in store.group else None)


# -- stores by reference -------------------------------------------------------------------------------------------
def store_path(home: SageHome, model: ModelRef, dataset: DatasetRef, key: str):
    """Where the store of `model` on `dataset` under the capture stage's `key` lies (its address holds the key)."""
    return home.activations_path(model.hash, dataset.hash, key)


def prepare_store(home: SageHome, model_ref: ModelRef, dataset: DatasetRef, request: CaptureRequest, key: str,
                  model: Callable[[], Any]) -> StoreRef:
    """The store for (model, dataset, request) at its keyed address: found finished, or created (or reopened to
    resume) with the model `model()` gives (a context manager: loaded only when the store is not finished)."""
    path = store_path(home, model_ref, dataset, key)
    identity = {"model_hash": model_ref.hash, "dataset_hash": dataset.hash, "request_hash": stable_hash(request)}
    store = ActivationStore(path)
    if not store.is_complete():
        with model() as m:
            store = open_or_create_store(path, m, read_prompts(home.at(dataset)), request, identity)
    # the shards compute from (and write the prompt-derived files of) the prompt table itself
    return StoreRef(path=home.relative(path), hash="", n_chunks=store.n_chunks, prompts_path=dataset.path, **identity)


def store_problem(home: SageHome, ref: StoreRef) -> str | None:
    """Why the store `ref` names is not finished and whole (one line naming the file at fault), or None."""
    return ActivationStore(home.at(ref)).problem()


def unfinished(home: SageHome, ref: StoreRef) -> ActivationStore | None:
    """The store `ref` names when chunks are left to capture, else None (finished and whole)."""
    store = ActivationStore(home.at(ref))
    return None if store.is_complete() else store


def seal(home: SageHome, ref: StoreRef) -> StoreRef:
    """Seal the store (or open a sealed one, verified: every chunk's size and checksum); its content hash in `hash`."""
    s = ActivationStore(home.at(ref))
    content = s.finalize() if not s.is_complete() else ActivationStore.open(s.path).content_hash()
    return ref.model_copy(update={"hash": content, "n_chunks": s.n_chunks})


def open_sealed(home: SageHome, ref: StoreRef, dataset: DatasetRef) -> ActivationStore:
    """The sealed store `ref` names, refused unless it was captured from `dataset`."""
    return ActivationStore.open(home.at(ref), expect={"dataset_hash": dataset.hash})
