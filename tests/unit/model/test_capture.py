"""The pure capture code: hook checks and how many prompts a chunk holds (the store and the engine that fills it are
tested in tests/unit/storage/test_activation_store.py)."""

from __future__ import annotations

import pytest

from sage_core.model.capture import CaptureError, check_hooks
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
