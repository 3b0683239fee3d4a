"""How an activation store's chunk files reach the disk: written from the caller's arrays without a copy where that is
safe, their writeback started at once, checked at the seal from the checksums of the bytes written (a change since is
still caught), and every file on the disk before the marker says the store is whole."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import storage.atomic as atomic
import storage.chunk_io as chunk_io
import storage.store_checks as store_checks
from storage.activations import ActivationStore
from storage.atomic import MARKER, StoreError
from storage.chunk_io import from_storage, to_storage

IDENT = {"model_hash": "m", "dataset_hash": "d", "request_hash": "r"}
SHAPES = {"blocks.0.hook_resid_post": ((8,), ("d_model",)), "blocks.1.hook_resid_post": ((8,), ("d_model",))}
N, WIDTH, CHUNK = 10, 6, 4  # chunks of 4, 4 and 2 prompts


def data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {h: rng.standard_normal((N, WIDTH, *t)).astype(np.float32) for h, (t, _) in SHAPES.items()}


def new_store(path, compression: str = "none", dtype: str = "float32") -> ActivationStore:
    return ActivationStore.create_or_resume(
        path, attrs=IDENT, hook_shapes=SHAPES, tokens=np.arange(N * WIDTH, dtype=np.int32).reshape(N, WIDTH),
        lengths=np.full(N, WIDTH, np.int32), prompt_ids=[f"p{i}" for i in range(N)], chunk_prompts=CHUNK,
        dtype=dtype, compression=compression)


def fill(store: ActivationStore, arrays: dict[str, np.ndarray], via_zarr: bool = False) -> None:
    for i in range(store.n_chunks):
        lo, hi = store.chunk_range(i)
        store.write_chunk(i, {h: a[lo:hi] for h, a in arrays.items()}, via_zarr=via_zarr)


def test_encoded_bytes_of_the_io_schedule_are_a_copy(tmp_path):
    """encode_chunk's bytes are written while the caller refills its arrays: uncompressed, they must not be a view."""
    store = new_store(tmp_path / "s.zarr")
    arrays = {h: a[:CHUNK].copy() for h, a in data().items()}
    encoded = store.encode_chunk(0, arrays)
    before = {h: bytes(p) for h, (p, _) in encoded.items()}
    for a in arrays.values():
        a[:] = 7.0
    assert all(isinstance(p, bytes) for p, _ in encoded.values())
    assert {h: bytes(p) for h, (p, _) in encoded.items()} == before
    store.write_encoded(0, encoded)
    lo, hi = store.chunk_range(0)
    rel = store._chunk_files(0)["blocks.0.hook_resid_post"]
    assert (store.path / rel).read_bytes() == data()["blocks.0.hook_resid_post"][lo:hi].tobytes()


@pytest.mark.parametrize("via_zarr", [False, True])
def test_every_chunk_file_starts_its_writeback_when_written(tmp_path, monkeypatch, via_zarr):
    """The disk works while later chunks are encoded (SAGE's encoder and zarr's pipeline alike)."""
    started = []
    monkeypatch.setattr(chunk_io, "start_writeback", lambda fd: started.append(fd))
    store = new_store(tmp_path / "s.zarr", "lz4")
    fill(store, data(), via_zarr)
    chunk_files = sum(len(store._chunk_files(i)) for i in range(store.n_chunks))
    assert len(started) >= chunk_files == store.n_chunks * 3


def test_the_seal_flushes_every_file_before_the_marker(tmp_path, monkeypatch):
    flushed = []
    real = chunk_io.flush

    def recording(files, dirs):
        files, dirs = list(files), list(dirs)
        assert not (tmp_path / "s.zarr" / MARKER).exists(), "the marker came before the flush"
        flushed.extend(files)
        real(files, dirs)

    monkeypatch.setattr(chunk_io, "flush", recording)
    store = new_store(tmp_path / "s.zarr")
    fill(store, data())
    store.finalize()
    listed = json.loads((store.path / MARKER).read_text())["files"]
    assert {p.relative_to(store.path).as_posix() for p in flushed} == set(listed)
    assert any("/c/" in rel for rel in listed) and any(rel.startswith("_progress/") for rel in listed)


def test_the_seal_checks_the_chunks_it_wrote_without_reading_them_and_catches_a_change(tmp_path, monkeypatch):
    reads = []
    real = store_checks.file_digest

    def counting(p, st=None):  # a read is a digest not in the cache the writer seeded
        if atomic._key(Path(p), st or Path(p).stat()) not in atomic._digests:
            reads.append(p)
        return real(p, st)

    monkeypatch.setattr(store_checks, "file_digest", counting)
    store = new_store(tmp_path / "s.zarr")
    fill(store, data())
    store.finalize()
    written = {store.path / rel for i in range(store.n_chunks) for rel in store._chunk_files(i).values()}
    assert not written & set(reads), "the seal read back chunk files this process had just written"
    damaged = new_store(tmp_path / "t.zarr")
    fill(damaged, data())
    chunk = damaged.path / damaged._chunk_files(1)["blocks.1.hook_resid_post"]
    time.sleep(0.05)  # file times are coarse: the change must not share the written version's timestamps
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="chunk 1 of blocks.1.hook_resid_post was truncated or modified"):
        damaged.finalize()
    assert not (damaged.path / MARKER).exists()


def test_uncompressed_chunks_are_written_from_the_arrays_unchanged(tmp_path):
    """No copy of the caller's arrays (a view is written), yet the bytes on disk are theirs, edge chunk padded."""
    arrays = data(1)
    store = new_store(tmp_path / "s.zarr")
    fill(store, arrays)
    store.finalize()
    got = ActivationStore.open(store.path)
    for h, a in arrays.items():
        np.testing.assert_array_equal(got.read(h), a)
    edge = store.path / store._chunk_files(2)["blocks.0.hook_resid_post"]
    assert edge.stat().st_size == CHUNK * WIDTH * 8 * 4


@pytest.mark.parametrize("dtype,compression", [("float32", "lz4"), ("float16", "zstd"), ("bfloat16", "lz4"),
                                               ("float32", "none")])
def test_direct_chunk_writes_equal_zarrs_own_bytes(tmp_path, monkeypatch, dtype, compression):
    """write_chunk encodes chunks itself (why: `chunk_io.chunk_encoder`); the files must be the very bytes zarr's own
    pipeline writes, edge chunk (padded) included, and read back through zarr and xarray."""
    rng = np.random.default_rng(0)
    n, width, chunk = 10, 6, 4  # chunks of 4, 4, 2 prompts
    shapes = {"blocks.0.hook_resid_post": ((8,), ("d_model",)), "blocks.0.attn.hook_z": ((2, 3), ("head", "d_head"))}
    data = {h: rng.standard_normal((n, width, *t)).astype(np.float32) for h, (t, _) in shapes.items()}

    def build(path, via_zarr=False):
        store = ActivationStore.create_or_resume(
            path, attrs=IDENT, hook_shapes=shapes, tokens=np.zeros((n, width), np.int32),
            lengths=np.full(n, width, np.int32), prompt_ids=[f"p{i}" for i in range(n)], chunk_prompts=chunk,
            dtype=dtype, compression=compression)
        for i in range(store.n_chunks):
            lo, hi = store.chunk_range(i)
            store.write_chunk(i, {h: a[lo:hi] for h, a in data.items()}, via_zarr=via_zarr)
        store.finalize()
        return store

    fast = build(tmp_path / "fast.zarr")
    slows = [build(tmp_path / "via.zarr", via_zarr=True)]  # zarr's own pipeline, asked for
    monkeypatch.setattr(chunk_io, "chunk_encoder", lambda arr: None)  # and for a codec chain SAGE does not encode
    slows.append(build(tmp_path / "zarr.zarr"))
    for slow in slows:
        for i in range(fast.n_chunks):
            for rel in fast._chunk_files(i).values():
                assert (fast.path / rel).read_bytes() == (slow.path / rel).read_bytes(), rel
        assert fast.content_hash() == slow.content_hash()
        ActivationStore.open(slow.path)
    reopened = ActivationStore.open(fast.path)
    for h, a in data.items():
        np.testing.assert_array_equal(reopened.read(h), from_storage(to_storage(a, dtype), dtype))
    assert not list(fast.path.rglob(".*.tmp-*"))
