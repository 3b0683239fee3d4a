"""Core metrics: the zero-ablation CE computed apart (once per model, hook and text) equals the one core_metrics
computes itself, and handing it in changes no figure."""

from __future__ import annotations

import pytest
import torch

from sage_core.model.transformer import ModelConfig, build_model
from sage_core.scoring.core import core_metrics, zero_ablation_ce


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(name="t", d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, n_ctx=16), 40)


def test_zero_ablation_ce_apart_is_the_same_as_inside(model):
    torch.manual_seed(1)
    tokens = torch.randint(3, 40, (9, 12))
    tokens[2, 8:] = 1  # right padding (pad id 1)
    hook = "blocks.1.hook_resid_pre"
    w = torch.randn(16, 24)
    enc, dec = (lambda x: torch.relu(x @ w)), (lambda f: f @ w.T / 24)
    inside = core_metrics(model, hook, enc, dec, 24, tokens, pad_id=1, batch_size=4)
    zero = zero_ablation_ce(model, hook, tokens, pad_id=1, batch_size=4)
    assert zero == pytest.approx(inside["ce_zero_ablation"], rel=1e-6)
    given = core_metrics(model, hook, enc, dec, 24, tokens, pad_id=1, batch_size=4, ce_zero=zero)
    assert given == pytest.approx(inside, rel=1e-6)


def test_passes_from_the_hook_block_match_whole_passes(model):
    """Clean and zero-ablated CE by whole forward passes, by hand: the same as core_metrics' (whose passes start at
    the hook's block from one run of the blocks before it)."""
    import torch.nn.functional as F

    torch.manual_seed(2)
    tokens = torch.randint(3, 40, (5, 10))
    hook = "blocks.1.hook_mlp_out"
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False

    def zero(a, hook):  # noqa: ARG001
        a = a.clone()
        a[keep] = 0
        return a

    def ce(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()

    m = core_metrics(model, hook, lambda x: x, lambda f: f, 16, tokens, pad_id=1)
    assert m["ce_clean"] == pytest.approx(ce(model(tokens)), rel=1e-5)
    assert m["ce_zero_ablation"] == pytest.approx(ce(model.run_with_hooks(tokens, fwd_hooks=[(hook, zero)])), rel=1e-5)
    assert m["ce_with_sae"] == pytest.approx(m["ce_clean"], rel=1e-5) and m["kl"] == pytest.approx(0, abs=1e-6)
