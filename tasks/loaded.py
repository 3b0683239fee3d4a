"""Load once per process: what a run's tasks share, each kept under its content hash.

A model is read from disk once per (content hash, device); what else a stage loads once (an SAE, a task's section
references) goes through `once` with its own loader, so this module imports no stage's code and no stage's cache key
follows another's (the keys hash the modules a task imports).

SAEs and references are read-only, so every thread shares one instance. A model is not: TransformerLens hooks are
attached to the module itself, so two threads running hooked forward passes on one instance would see each other's
hooks. `model()` lends each concurrent user an instance of its own: the one read from disk first, then instances
built from its weights (never deep copies, which would copy the hooks a borrower has attached at that moment), and
takes them back afterwards.

`LOADS` counts per kind what was read from disk ("model-copy": instances built in memory; "moved": copies on a
device of something read once to the CPU). Each process counts its own: a Dask worker's are its reads.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from storage import zoo as zoo_store
from storage.home import SageHome
from storage.refs import ModelRef

NO_CACHE_ENV = "SAGE_NO_LOAD_CACHE"
LOADS: Counter[str] = Counter()
# "moved": device copies of what was read to the CPU (not reads: `LOADS` counts them apart)
MAX_ENTRIES = {"model": 2, "sae": 64, "references": 16, "moved": 64, "zero-ce": 256, "core-reference": 16, "prefixes": 4}  # a long-lived worker (the watch service) stays bounded

# and by size: a worker scoring hundreds of 24576-wide SAEs (150 MiB each on GPT-2 small) keeps a flat footprint,
# while a run's small SAEs all stay (each read once). SAGE_KEEP_MIB overrides it.
MAX_BYTES = {"sae": 1024 << 20, "moved": 1024 << 20, "core-reference": 1024 << 20}
KEEP_ENV = "SAGE_KEEP_MIB"

_lock = threading.RLock()
_cache: dict[str, OrderedDict[tuple, Any]] = {kind: OrderedDict() for kind in MAX_ENTRIES}
_sizes: dict[str, dict[tuple, int]] = {kind: {} for kind in MAX_BYTES}
_loading: dict[tuple, threading.Lock] = {}


def keeping() -> bool:
    """False when SAGE_NO_LOAD_CACHE=1: every use reads from disk again (how loads were counted before this cache;
    `benchmarks/scale.py` compares the two)."""
    return os.environ.get(NO_CACHE_ENV, "") != "1"


def once(kind: str, key: tuple, load: Callable[[], Any]) -> Any:
    """The value kept under (`kind`, `key`), loaded by exactly one thread (the others wait for it, then share it).
    A load that raises keeps nothing: the next caller tries again."""
    if not keeping():
        value = load()
        with _lock:
            LOADS[kind] += 1
        return value
    with _lock:
        entries = _cache[kind]
        if key in entries:
            entries.move_to_end(key)
            return entries[key]
        gate = _loading.setdefault((kind, *key), threading.Lock())
    with gate:
        with _lock:
            if key in _cache[kind]:
                return _cache[kind][key]
        value = load()
        keep(kind, key, value)
        with _lock:
            _loading.pop((kind, *key), None)
        return value


def peek(kind: str, key: tuple) -> Any:
    """The value kept under (`kind`, `key`), or None; loads nothing."""
    with _lock:
        return _cache[kind].get(key) if keeping() else None


def keep(kind: str, key: tuple, value: Any) -> None:
    """Keep `value`, just read from disk, as if `once` had loaded it (a task that had to read it anyway: resolving an
    SAE reads it to learn the content hash it is kept under)."""
    with _lock:
        LOADS[kind] += 1
        if not keeping():
            return
        entries = _cache[kind]
        entries[key] = value
        entries.move_to_end(key)
        if kind in _sizes:
            _sizes[kind][key] = nbytes(value)
        while len(entries) > MAX_ENTRIES[kind] or (len(entries) > 1 and _over_budget(kind)):
            old, _ = entries.popitem(last=False)
            _sizes.get(kind, {}).pop(old, None)


def nbytes(value: Any) -> int:
    """The bytes of the tensors `value` holds (a LoadedSAE's torch module; references' tensors), 0 if unknown."""
    import torch

    own = getattr(value, "nbytes", None)  # a value that counts its own (a core reference)
    if isinstance(own, int):
        return own
    inner = getattr(value, "sae", value)
    if isinstance(inner, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*inner.parameters(), *inner.buffers()))
    return 0


def _over_budget(kind: str) -> bool:
    if kind not in _sizes:
        return False
    cap = int(os.environ[KEEP_ENV]) << 20 if os.environ.get(KEEP_ENV, "").isdigit() else MAX_BYTES[kind]
    return sum(_sizes[kind].values()) > cap


class _ModelPool:
    """The instances of one model: `first` was read from disk; `free` ones wait to be lent."""

    def __init__(self, first):
        self.first = first
        self.free = [first]


def _pool(home: SageHome, ref: ModelRef, device: str) -> _ModelPool:
    return once("model", (ref.hash, device), lambda: _ModelPool(zoo_store.load_model(home.at(ref), device)))


@contextmanager
def model(home: SageHome, ref: ModelRef, device: str = "cpu") -> Iterator[Any]:
    """A HookedTransformer for this thread's exclusive use while the block runs."""
    pool = _pool(home, ref, device)
    with _lock:
        instance = pool.free.pop() if pool.free else None
    if instance is None:  # every instance is lent: one more, built from the weights in memory, not read from disk
        instance = zoo_store.instance_like(pool.first, device)
        with _lock:
            LOADS["model-copy"] += 1
    try:
        yield instance
    finally:
        instance.reset_hooks(including_permanent=True)  # a borrower's forgotten hook never reaches the next one
        with _lock:
            pool.free.append(instance)


def shared_model(home: SageHome, ref: ModelRef, device: str = "cpu") -> Any:
    """The model for uses that read only its config and weights (no hooked forward pass): `check_sae`, the write
    maps of `mapping`. Never run it with hooks from here."""
    return _pool(home, ref, device).first


def clear() -> None:
    """Forget everything loaded (tests; a worker between unrelated runs)."""
    with _lock:
        for entries in _cache.values():
            entries.clear()
        for sizes in _sizes.values():
            sizes.clear()
        LOADS.clear()
