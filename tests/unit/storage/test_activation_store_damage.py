"""Damaged activation stores (issue #15 item 12): named in one line before zarr decodes anything, and repaired by
resuming. Fixtures and helpers: test_activation_store.py."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sage_core.model.capture import CaptureRequest
from storage.activations import ActivationStore
from storage.atomic import StoreError
from storage.capture import open_or_create_store
from tasks.capture import capture_chunks
from tests.unit.storage import test_activation_store as base
from tests.unit.storage.test_activation_store import HOOKS, IDENT, copy_of

# the same fixtures, made once for this module
model, prompts, sealed = base.model, base.prompts, base.sealed


def _flip3(path):
    b = bytearray(path.read_bytes())
    for k in range(3):
        b[len(b) // 2 + k] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_chunk_is_named_in_one_line_at_open_and_at_read(tmp_path, sealed, monkeypatch, damage):
    store = copy_of(sealed(), tmp_path / "s.zarr")
    chunk = store.path / HOOKS[0] / "c" / "1" / "0" / "0"

    def hurt():
        if damage == "flip":
            _flip3(chunk)
        else:
            chunk.write_bytes(chunk.read_bytes()[:-7])

    time.sleep(0.05)  # file times are coarse: the damage must not share the checked version's timestamps
    hurt()
    with pytest.raises(StoreError) as e:
        ActivationStore.open(store.path, verify=False)  # verify=False no longer skips the check
    msg = str(e.value)
    assert "\n" not in msg and str(store.path) in msg and f"chunk 1 of {HOOKS[0]}" in msg and "rerun the capture" in msg
    # a store opened before the damage: reading the damaged chunk is refused before zarr decodes it
    fresh = copy_of(sealed(), tmp_path / "t.zarr")
    fresh.read(HOOKS[0])
    chunk = fresh.path / HOOKS[0] / "c" / "1" / "0" / "0"
    time.sleep(0.05)
    hurt()
    chunks = fresh.iter_chunks(HOOKS[0])
    assert next(chunks)[0] == 0  # chunk 0 is whole
    import zarr

    monkeypatch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("zarr decoded a damaged chunk"))
    with pytest.raises(StoreError, match=f"chunk 1 of {HOOKS[0]}"):
        next(chunks)
    with pytest.raises(StoreError, match=f"chunk 1 of {HOOKS[0]}"):
        fresh.read(HOOKS[0], slice(0, fresh.n_prompts))
    with pytest.raises(StoreError, match=f"chunk 1 of {HOOKS[0]}"):
        fresh.read(HOOKS[0], np.arange(fresh.chunk_prompts, fresh.chunk_prompts + 2))
    assert not fresh.is_whole()


def test_reads_of_undamaged_chunks_still_work_and_resuming_repairs_the_damaged_one(tmp_path, model, prompts, sealed):
    from storage.atomic import is_whole

    store = copy_of(sealed(), tmp_path / "s.zarr")
    good = store.content_hash()
    assert is_whole(store.path) and store.is_whole()
    before = store.read(HOOKS[0])
    _flip3(store.path / HOOKS[0] / "c" / "1" / "0" / "0")
    assert not ActivationStore(store.path).is_complete()  # so the capture stage resumes it rather than keeping it
    np.testing.assert_array_equal(store.read(HOOKS[0], slice(0, store.chunk_prompts)), before[: store.chunk_prompts])
    assert not is_whole(store.path)
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16)
    again = open_or_create_store(store.path, model, prompts, req, IDENT)  # what rerunning the capture does
    assert again.done_chunks() == set(range(again.n_chunks)) - {1} and not again.is_complete()
    assert capture_chunks(again, model, 16) == 1
    assert again.finalize() == good
    np.testing.assert_array_equal(ActivationStore.open(store.path).read(HOOKS[0]), before)
    assert is_whole(store.path)


@pytest.mark.parametrize("positions,array,compression", [("all", "tokens", "none"), ("all", "tokens", "lz4"),
                                                         ("roles", "role_pos", "none")])
def test_resuming_rewrites_damaged_prompt_chunks_from_the_prompt_table(tmp_path, model, prompts, sealed, caplog,
                                                                       positions, array, compression):
    """Damaged tokens (or role positions) of a chunk: the resumed capture computes from the prompt table and writes
    that chunk's prompt files again, so neither wrong activations nor the damaged file's digest are ever recorded."""
    store = copy_of(sealed(positions=positions, compression=compression), tmp_path / "s.zarr")
    good, before = store.content_hash(), store.read(HOOKS[0])
    rel = store._chunk_files(1)[array]
    raw = np.frombuffer((store.path / rel).read_bytes(), np.uint8).copy()
    if compression == "none":  # wrong values that still decode: the silent case
        raw.view("<i4")[: raw.size // 8] += 1
    else:
        raw[raw.size // 2: raw.size // 2 + 3] ^= 0xFF
    time.sleep(0.05)
    (store.path / rel).write_bytes(raw.tobytes())
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16, positions=positions, compression=compression)
    with caplog.at_level("WARNING", logger="storage.activations"):
        again = open_or_create_store(store.path, model, prompts, req, IDENT)
    assert capture_chunks(again, model, 16) == 1
    assert again.finalize() == good
    np.testing.assert_array_equal(ActivationStore.open(store.path).read(HOOKS[0]), before)
    assert [r.getMessage() for r in caplog.records if rel in r.getMessage()], "the damaged file is named"
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_a_chunk_pass_records_only_files_it_wrote(tmp_path, model, prompts):
    """The prompt files of a chunk come from the attached prompt table in that chunk's pass; a store without one
    cannot be filled (it would record files it did not write)."""
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16)
    store = open_or_create_store(tmp_path / "s.zarr", model, prompts, req, IDENT)
    tokens = store.path / store._chunk_files(0)["tokens"]
    tokens.write_bytes(b"not a chunk")
    assert capture_chunks(store, model, 16, chunks=[0]) == 1
    assert store._chunk_problem(0) is None and tokens.read_bytes() != b"not a chunk"
    with pytest.raises(StoreError, match="needs the prompt table"):
        capture_chunks(ActivationStore(store.path), model, 16, chunks=[1])


def test_an_unreadable_chunk_record_keeps_its_cause(tmp_path, sealed):
    store = copy_of(sealed(), tmp_path / "s.zarr")
    rec = store.path / "_progress" / "000001.json"
    rec.write_text("{not json")
    with pytest.raises(StoreError) as e:
        store._chunk_record(1)
    assert isinstance(e.value.__cause__, ValueError) and "Expecting property name" in str(e.value)
    rec.unlink()
    rec.mkdir()
    with pytest.raises(StoreError) as e:
        ActivationStore.open(store.path)
    assert "\n" not in str(e.value) and "000001.json" in str(e.value) and "Is a directory" in str(e.value)


def test_the_capture_stage_cache_hit_needs_a_whole_store(tmp_path, sealed):
    """A damaged store is no cache hit for `prepare-capture` (the rerun resumes it); the reason names the file."""
    from storage.home import SageHome
    from storage.refs import StoreRef
    from tasks.capture import store_whole

    store = copy_of(sealed(), tmp_path / "s.zarr")
    m = StoreRef(path="s.zarr", hash="", n_chunks=store.n_chunks, model_hash="m1", dataset_hash="d1")
    assert store_whole(m, SageHome(tmp_path), "k") is None
    _flip3(store.path / HOOKS[0] / "c" / "2" / "0" / "0")
    problem = store_whole(m, SageHome(tmp_path), "k")
    assert problem and "\n" not in problem and f"{HOOKS[0]}/c/2/0/0" in problem


def test_a_marker_without_a_file_list_is_finished_again(tmp_path, sealed):
    """Stores sealed before the marker listed their files are re-checked and resealed, not recaptured."""
    from storage.atomic import MARKER, is_whole

    store = copy_of(sealed(), tmp_path / "s.zarr")
    good = store.content_hash()
    marker = json.loads((store.path / MARKER).read_text())
    (store.path / MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k not in ("files", "kind")}))
    ActivationStore.open(store.path)  # still readable, checked chunk by chunk against its records
    assert not store.is_complete() and not is_whole(store.path)
    assert store.finalize() == good and store.is_complete() and is_whole(store.path)


def test_a_damaged_metadata_file_is_named(tmp_path, model, prompts, sealed):
    store = copy_of(sealed(), tmp_path / "s.zarr")
    meta = store.path / HOOKS[0] / "zarr.json"
    meta.write_text(meta.read_text().replace('"prompt"', '"prompT"'))
    with pytest.raises(StoreError, match="zarr.json.*delete the store and rerun the capture"):
        ActivationStore.open(store.path)
    assert not store.is_complete()
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16)
    with pytest.raises(StoreError, match="zarr.json.*delete the store"):  # resuming cannot rewrite it: never resealed
        open_or_create_store(store.path, model, prompts, req, IDENT)


@pytest.mark.parametrize("schedule", ["background", "io"])
def test_a_failed_chunk_write_leaves_no_temporary_file(tmp_path, model, prompts, monkeypatch, schedule):
    """Half a chunk file on disk then a full disk: no temporary file is left, no chunk is recorded."""
    import storage.chunk_io as chunk_io

    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16)
    store = open_or_create_store(tmp_path / "s.zarr", model, prompts, req, IDENT)
    real = chunk_io._write_all

    def half_then_full(fd, data):
        real(fd, memoryview(data).cast("B")[: len(memoryview(data).cast("B")) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunk_io, "_write_all", half_then_full)
    with pytest.raises(StoreError, match="No space left on device"):
        capture_chunks(store, model, 16, schedule=schedule)
    monkeypatch.undo()
    assert not [p for p in store.path.rglob(".*") if p.is_file()], "temporary chunk files were left behind"
    assert store.done_chunks() == set()
