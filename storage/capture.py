"""Activation stores of a capture: a prompt table's arrays as a store holds them, creating (or reopening) a store
laid out for a request (`sage_core.model.capture.capture_layout`), attaching the prompt table a store was created
from; and, by typed reference (`storage.refs.StoreRef`), where a store lies, its identity, sealing and opening it.

What fills a store is elsewhere: the forward pass in `sage_core.model.capture`, the engine that streams chunks into
the store in `tasks.capture`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sage_core.model.capture import CaptureRequest, capture_layout
from sage_core.model.transformer import pad_sequences
from storage.activations import ActivationStore
from storage.atomic import StoreError
from storage.datasets import read_prompts
from storage.hashing import file_hash, stable_hash, stage_code_version
from storage.home import SageHome
from storage.refs import DatasetRef, ModelRef, StoreRef

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer


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
    """Create the store or reopen its unfinished copy, laid out by `capture_layout` (which validates the request
    against the model and prompts first)."""
    pa = prompt_arrays(df, model.tokenizer.pad_token_id if model.tokenizer else 0)
    layout = capture_layout(model, request, pa["tokens"].shape[1], len(pa["roles"]))
    return ActivationStore.create_or_resume(
        path,
        attrs={**identity, "model_name": model.cfg.model_name, "request": request.model_dump(mode="json"),
               "code_version": stage_code_version(__name__)},
        hook_shapes=layout.hook_shapes,
        tokens=pa["tokens"], lengths=pa["lengths"], prompt_ids=pa["prompt_ids"],
        chunk_prompts=layout.chunk_prompts, dtype=request.dtype,
        compression=request.compression,
        roles=pa["roles"] if request.positions == "roles" else None,
        role_pos=pa["role_pos"] if request.positions == "roles" else None,
    )


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
