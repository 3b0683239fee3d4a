"""Activation stores and the capture engine that fills them: values, layout, xarray view, content addressing, resume,
write schedules, tamper detection, bad input. Damaged stores and their repair: test_activation_store_damage.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from sage_core.model.capture import CaptureRequest, capture_batch
from sage_core.model.transformer import ModelConfig, build_model
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts
from storage.activations import ActivationStore
from storage.atomic import StoreError
from storage.capture import open_or_create_store
from storage.chunk_io import from_storage, to_storage
from tasks.capture import capture_chunks

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.hook_mlp_out")


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(d)
    return build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64), len(tokenizer),
                       tokenizer=AutoTokenizer.from_pretrained(d))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=30, n_test=10), tokenizer)


IDENT = {"model_hash": "m1", "dataset_hash": "d1", "request_hash": "r1"}
FEW = 48  # prompts for a test that captures its own store: six chunks of every position (eight prompts each)


def make(path, model, prompts, **kw):
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16, **kw)
    store = open_or_create_store(path, model, prompts, req, IDENT)
    capture_chunks(store, model, req.batch_size)
    store.finalize()
    return ActivationStore.open(path)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, model, prompts):
    """`sealed(**request)`: a finished store of the prompts, captured once per module for each request and never
    changed; a test that damages, resumes or reseals a store works on `copy_of` it (a capture is most of a test's
    time)."""
    made = {}

    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in made:
            made[key] = make(tmp_path_factory.mktemp("sealed") / "s.zarr", model, prompts, **kw)
        return made[key]

    return get


def copy_of(store, path):
    """A copy of a sealed store at `path`, opened (and so checked) as `make` returns it: every file the same bytes."""
    shutil.copytree(store.path, path)
    return ActivationStore.open(path)


def test_values_equal_run_with_cache(model, prompts, sealed):
    store = sealed()
    assert store.n_chunks > 2, "the test must span several chunks"
    toks = prompts["tokens"].to_list()
    for i in (0, 37, len(toks) - 1):
        _, cache = model.run_with_cache(torch.tensor([toks[i]]))
        for h in HOOKS:
            got = store.read(h, slice(i, i + 1))[0, : len(toks[i])]
            np.testing.assert_allclose(got, cache[h][0].numpy(), rtol=1e-5, atol=1e-5)
            assert not store.read(h, slice(i, i + 1))[0, len(toks[i]) :].any(), "padding must be zero"


@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 1e-2)])
def test_reduced_precision_within_tolerance(tmp_path, model, prompts, sealed, dtype, tol):
    store = make(tmp_path / "s.zarr", model, prompts, dtype=dtype)
    full = sealed()
    a, b = store.read(HOOKS[0]), full.read(HOOKS[0])
    assert np.abs(a - b).max() <= tol * np.abs(b).max()


def test_bfloat16_round_trip_matches_torch():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 7
    # halfway cases (ties to even), infinities, NaN, the largest float32 (rounds to inf), subnormals
    edge = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), np.inf, -np.inf, np.nan, 3.4028235e38, 1e-40,
                     0.0, -0.0], dtype=np.float32)
    x = np.concatenate([x, edge]).reshape(-1, 10)
    stored = to_storage(x, "bfloat16")
    assert stored.dtype == np.uint16 and stored.shape == x.shape
    ours = from_storage(stored, "bfloat16")
    ref = torch.tensor(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours, ref)  # NaN where NaN (assert_array_equal treats NaNs as equal)


def test_role_positions_only(model, prompts, sealed):
    store = sealed(positions="roles")
    ds = store.to_xarray()
    assert list(ds["role"].values) == ["IO", "S1", "S2", "END"]
    row = prompts.row(5, named=True)
    _, cache = model.run_with_cache(torch.tensor([row["tokens"]]))
    for j, role in enumerate(["IO", "S1", "S2", "END"]):
        np.testing.assert_allclose(store.read(HOOKS[0], slice(5, 6))[0, j], cache[HOOKS[0]][0, row[f"pos_{role}"]],
                                   rtol=1e-5, atol=1e-5)


def test_xarray_view_has_named_dims_and_coordinates(prompts, sealed):
    ds = sealed().to_xarray()
    assert ds[HOOKS[0]].dims == ("prompt", "position", "d")
    assert ds[HOOKS[1]].dims == ("prompt", "position", "head", "d_head")
    assert list(ds["prompt_id"].values) == prompts["prompt_id"].to_list()
    assert "prompt_id" in ds.coords
    sel = ds[HOOKS[0]].isel(prompt=3).values
    assert sel.shape == (ds.sizes["position"], 32)
    assert ds.attrs["model_hash"] == "m1" and ds.attrs["code_version"] and ds.attrs["dtype"] == "float32"
    assert set(ds.attrs["hooks"]) == set(HOOKS)


def test_streams_chunk_by_chunk(prompts, sealed):
    store = sealed()
    seen = 0
    for start, stop, arr in store.iter_chunks(HOOKS[0]):
        assert arr.shape[0] == stop - start <= store.chunk_prompts
        seen += stop - start
    assert seen == len(prompts)


def test_resume_is_bitwise_identical(tmp_path, model, prompts, sealed):
    full = sealed()
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16)
    part = open_or_create_store(tmp_path / "part.zarr", model, prompts, req, IDENT)
    capture_chunks(part, model, 16, chunks=[0, 2])
    with pytest.raises(StoreError, match="not a complete"):
        ActivationStore.open(tmp_path / "part.zarr")
    again = open_or_create_store(tmp_path / "part.zarr", model, prompts, req, IDENT)
    assert again.done_chunks() == {0, 2}
    assert capture_chunks(again, model, 16) == again.n_chunks - 2
    again.finalize()
    assert ActivationStore.open(tmp_path / "part.zarr").content_hash() == full.content_hash()
    for h in HOOKS:
        assert np.array_equal(again.read(h), full.read(h))


@pytest.mark.parametrize("positions", ["all", "roles"])
def test_every_write_schedule_gives_the_same_store(tmp_path, model, prompts, positions):
    """The three write schedules (a writer thread reusing two buffers; compress in turn, write files on a thread;
    everything in turn) store the same bytes: in the background a chunk's buffer must not be refilled before its write
    is done, and in the io schedule the encoded bytes must not alias the buffer."""
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16, positions=positions)
    df = prompts.head(FEW) if positions == "all" else prompts  # role positions only: five prompts fill a chunk less
    hashes = []
    for schedule in ("background", "io", "in_turn"):
        store = open_or_create_store(tmp_path / f"{schedule}.zarr", model, df, req, IDENT)
        done = []
        assert capture_chunks(store, model, 16, schedule=schedule, on_chunk=done.append) == store.n_chunks > 2
        assert sorted(done) == list(range(store.n_chunks))
        hashes.append(store.finalize())
    assert hashes[0] == hashes[1] == hashes[2]


def test_tampered_or_truncated_store_is_detected(tmp_path, sealed):
    store = copy_of(sealed(), tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / HOOKS[0] / "c" / "1" / "0" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="chunk 1 of blocks.0.hook_resid_post was truncated or modified"):
        ActivationStore.open(store.path)


def test_a_store_written_before_format_2_keeps_its_sha256_checksums(tmp_path, model, prompts):
    """Stores from before the xxh3 checksums (no `checksum` attribute, sha256 records) still open, verify and
    catch a modified chunk."""
    import hashlib

    req, df = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16), prompts.head(FEW)
    store = open_or_create_store(tmp_path / "old.zarr", model, df, req, IDENT)
    del store.group.attrs["checksum"]
    store = open_or_create_store(store.path, model, df, req, IDENT)  # resumed: attributes read afresh
    capture_chunks(store, model, 16)
    store.finalize()
    chunk = store.path / HOOKS[1] / "c" / "0" / "0" / "0" / "0"
    record = json.loads((store.path / "_progress" / "000000.json").read_text())
    assert record[HOOKS[1]] == hashlib.sha256(chunk.read_bytes()).hexdigest()[:32]
    ActivationStore.open(store.path)
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="chunk 0 of blocks.1.attn.hook_z was truncated or modified"):
        ActivationStore.open(store.path)


def test_store_from_another_model_or_dataset_is_refused(tmp_path, model, prompts, sealed):
    copy_of(sealed(), tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="captured with model_hash='m1', not 'other'"):
        ActivationStore.open(tmp_path / "s.zarr", expect={"model_hash": "other"})
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02)
    with pytest.raises(StoreError, match="another request"):
        open_or_create_store(tmp_path / "s.zarr", model, prompts, req, {**IDENT, "dataset_hash": "d2"})


def test_write_error_is_clear_and_store_stays_resumable(tmp_path, model, prompts, monkeypatch):
    req, df = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16), prompts.head(FEW)
    store = open_or_create_store(tmp_path / "s.zarr", model, df, req, IDENT)
    capture_chunks(store, model, 16, chunks=[0])
    import storage.chunk_io as acts_mod

    real = acts_mod.write_file

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(acts_mod, "write_file", disk_full)
    with pytest.raises(StoreError, match="No space left on device.*rerun the same command"):
        capture_chunks(store, model, 16)
    monkeypatch.setattr(acts_mod, "write_file", real)
    store = open_or_create_store(tmp_path / "s.zarr", model, df, req, IDENT)
    assert store.done_chunks() == {0}
    capture_chunks(store, model, 16)
    store.finalize()
    ActivationStore.open(store.path)


def test_works_for_any_hooked_transformer(tmp_path, prompts):
    """A model built straight from a HookedTransformerConfig, with another width and no project tokenizer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=24, n_ctx=64, d_head=8, n_heads=3, d_vocab=400, act_fn="relu",
                                  normalization_type="LNPre")
    m = HookedTransformer(cfg)
    df = prompts.head(12)
    req = CaptureRequest(hooks=("blocks.0.hook_resid_pre", "blocks.0.attn.hook_v"), chunk_mb=0.01)
    store = open_or_create_store(tmp_path / "any.zarr", m, df, req, IDENT)
    capture_chunks(store, m, 4)
    store.finalize()
    s = ActivationStore.open(tmp_path / "any.zarr")
    assert s.group["blocks.0.attn.hook_v"].shape == (12, 20, 3, 8)
    info = s.describe()
    assert json.dumps(info) and info["n_prompts"] == 12
    assert pl.Series(s.to_xarray()["prompt_id"].values).to_list() == df["prompt_id"].to_list()


GPU = "cuda" if torch.cuda.is_available() else None


@pytest.mark.skipif(GPU is None, reason="needs a CUDA GPU (checked on an H200; CI has none)")
@pytest.mark.parametrize("positions", ["all", "roles"])
def test_capture_on_a_gpu_matches_the_cpu_and_its_schedules_agree(tmp_path, model, prompts, positions):
    """On a GPU: values equal the CPU's within float32 rounding; every write schedule, and a resumed capture, store
    the same bytes."""
    import copy

    gpu = copy.deepcopy(model).to(GPU, print_details=False)
    req = CaptureRequest(hooks=HOOKS, chunk_mb=0.02, batch_size=16, positions=positions)
    cpu = open_or_create_store(tmp_path / "cpu.zarr", model, prompts, req, IDENT)
    capture_chunks(cpu, model, 16)
    cpu.finalize()
    hashes = []
    for schedule in ("background", "io", "in_turn"):
        store = open_or_create_store(tmp_path / f"{schedule}.zarr", gpu, prompts, req, IDENT)
        capture_chunks(store, gpu, 16, schedule=schedule)
        hashes.append(store.finalize())
    part = open_or_create_store(tmp_path / "resumed.zarr", gpu, prompts, req, IDENT)
    assert capture_chunks(part, gpu, 16, chunks=[0, 2]) == 2 and part.n_chunks > 3
    assert capture_chunks(part, gpu, 16) == part.n_chunks - 2
    hashes.append(part.finalize())
    assert len(set(hashes)) == 1
    got = ActivationStore.open(tmp_path / "io.zarr")
    for h in HOOKS:
        np.testing.assert_allclose(got.read(h), cpu.read(h), rtol=1e-4, atol=1e-5)
    # without an out buffer too, a GPU model's activations come back as host arrays
    tokens = torch.as_tensor(cpu.group["tokens"][:8], dtype=torch.long)
    role_pos = torch.as_tensor(cpu.group["role_pos"][:8], dtype=torch.long) if positions == "roles" else None
    direct, on_cpu = (capture_batch(m, tokens, list(HOOKS), role_pos) for m in (gpu, model))
    for h in HOOKS:
        assert isinstance(direct[h], np.ndarray)
        np.testing.assert_allclose(direct[h], on_cpu[h], rtol=1e-4, atol=1e-5)
