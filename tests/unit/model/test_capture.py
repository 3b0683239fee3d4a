"""The pure capture code: hook checks, how many prompts a chunk holds, a store's layout and one chunk's activations
(the store and the engine that fills it are tested in tests/unit/storage/test_activation_store.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from sage_core.model.capture import CaptureError, CaptureRequest, capture_chunk, capture_layout, check_hooks
from sage_core.model.transformer import ModelConfig, build_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64), len(tokenizer))


def test_chunks_hold_whole_forward_batches():
    """A forward batch never straddles two chunks (it would run as two short passes)."""
    from sage_core.model.capture import chunk_prompts

    per_prompt = 2**20 // 68  # 68 prompts fit in 1 MB
    assert chunk_prompts(per_prompt, 1.0) == 68
    assert chunk_prompts(per_prompt, 1.0, batch_size=64) == 64
    assert chunk_prompts(per_prompt, 1.0, batch_size=16) == 64
    assert chunk_prompts(per_prompt, 1.0, batch_size=100) == 68  # smaller than a batch: one pass per chunk
    assert chunk_prompts(per_prompt, 0.001, batch_size=8) == 1


def test_unknown_hook_names_closest(model):
    with pytest.raises(CaptureError, match="no hook 'blocks.0.hook_resid_pots'.*blocks.0.hook_resid_post"):
        check_hooks(model, ["blocks.0.hook_resid_pots"])


def test_attention_patterns_are_refused(model):
    with pytest.raises(CaptureError, match="attention pattern"):
        check_hooks(model, ["blocks.0.attn.hook_pattern"])


RESID, Z = "blocks.0.hook_resid_post", "blocks.1.attn.hook_z"


def test_a_store_layout_from_the_request_and_the_prompts(model):
    """d_model 32, 2 heads of 16: 32 numbers a position at either hook. All 10 positions in float32 are 1280 bytes a
    prompt, 8 of them in 0.01 MB (10485.76 bytes); 3 role positions in float16 are 192 bytes, 54 of them."""
    layout = capture_layout(model, CaptureRequest(hooks=(RESID, Z), chunk_mb=0.01, batch_size=1), 10, 3)
    assert layout.hook_shapes == {RESID: ((32,), ("d",)), Z: ((2, 16), ("head", "d_head"))}
    assert layout.chunk_prompts == 8
    assert capture_layout(model, CaptureRequest(hooks=(RESID, Z), chunk_mb=0.01, batch_size=3), 10, 3).chunk_prompts == 6
    roles = CaptureRequest(hooks=(Z,), positions="roles", dtype="float16", chunk_mb=0.01, batch_size=1)
    assert capture_layout(model, roles, 10, 3).chunk_prompts == 54


def test_a_layout_refuses_what_cannot_be_captured(model):
    with pytest.raises(ValueError, match="pos_<role> columns"):
        capture_layout(model, CaptureRequest(hooks=(RESID,), positions="roles"), 10, 0)
    with pytest.raises(ValueError, match="33 tokens exceed the model's n_ctx=32"):
        capture_layout(model, CaptureRequest(hooks=(RESID,)), model.cfg.n_ctx + 1, 0)
    with pytest.raises(CaptureError, match="no hook"):
        capture_layout(model, CaptureRequest(hooks=("blocks.9.hook_resid_post",)), 10, 0)


def test_a_chunk_holds_each_prompts_own_activations_in_batches(model):
    """Three prompts of lengths 5, 3 and 4 padded to 5, in forward batches of 2: each row is the prompt's activations
    run alone, zero past its length; with role positions, the rows at those positions."""
    tokens = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0], [9, 10, 11, 12, 0]], dtype=np.int32)
    lengths = np.array([5, 3, 4], dtype=np.int32)
    out = {RESID: np.full((3, 5, 32), np.nan, np.float32), Z: np.full((3, 5, 2, 16), np.nan, np.float32)}
    capture_chunk(model, tokens, lengths, None, out, batch_size=2)
    roles = np.array([[4, 0], [2, 1], [0, 3]], dtype=np.int32)
    picked = {RESID: np.zeros((3, 2, 32), np.float32), Z: np.zeros((3, 2, 2, 16), np.float32)}
    capture_chunk(model, tokens, lengths, roles, picked, batch_size=2)
    for p in range(3):
        n = int(lengths[p])
        _, cache = model.run_with_cache(torch.as_tensor(tokens[p : p + 1, :n], dtype=torch.long))
        for h in (RESID, Z):
            alone = cache[h][0].numpy()
            np.testing.assert_allclose(out[h][p, :n], alone, rtol=1e-5, atol=1e-5)
            assert (out[h][p, n:] == 0).all()
            np.testing.assert_allclose(picked[h][p], alone[roles[p]], rtol=1e-5, atol=1e-5)


def test_capture_is_pure():
    """The capture code imports neither Prefect nor the storage layer nor zarr."""
    code = ("import sys, sage_core.model.capture; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'storage', 'tasks', 'zarr'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
