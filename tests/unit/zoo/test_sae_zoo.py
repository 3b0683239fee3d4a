from __future__ import annotations

import pytest
import torch

from sage_core.model.transformer import ModelConfig, build_model
from sage_core.zoo.train import (
    SAESpec,
    ZooError,
    capture_activations,
    ce_loss_recovered,
    default_zoo,
    hook_d_in,
    reconstruction_metrics,
    train_sae,
    validate_specs,
)


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32), d_vocab=30)


def _sparse_data(n=4096, d=16, n_feat=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=1)
    coef = torch.rand(n, n_feat, generator=g) * (torch.rand(n, n_feat, generator=g) < 0.06)
    return coef @ dirs * 3


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_each_architecture_trains_and_reconstructs(arch):
    acts = _sparse_data()
    spec = SAESpec(hook="blocks.0.hook_resid_post", architecture=arch, d_sae=64, k=8, epochs=8, batch_size=256,
                   lr=3e-3, l1_coefficient=0.3, l0_coefficient=0.05)
    sae = train_sae(spec, acts, model_name="t")
    m = reconstruction_metrics(sae, acts)
    assert m["explained_variance"] > 0.6, m
    assert 0 < m["l0"] < 64 and 0 <= m["dead_share"] <= 1
    assert sae.cfg.metadata.hook_name == spec.hook


def test_reconstruction_metrics_against_brute_force():
    class Fixed:
        """Keeps the first two coordinates, drops the rest."""

        class cfg:
            d_sae = 4

        def encode(self, x):
            f = torch.zeros(len(x), 4)
            f[:, :2] = x[:, :2].clamp(min=0)
            return f

        def decode(self, f):
            out = torch.zeros(len(f), 3)
            out[:, :2] = f[:, :2]
            return out

    x = torch.tensor([[1.0, 2.0, 1.0], [3.0, 0.0, -1.0], [2.0, 1.0, 0.0]])
    m = reconstruction_metrics(Fixed(), x)
    recon = Fixed().decode(Fixed().encode(x))
    ev = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert abs(m["explained_variance"] - ev.item()) < 1e-6
    assert abs(m["l0"] - 5 / 3) < 1e-6  # non-zero features: 2, 1, 2
    assert m["dead_share"] == 0.5


def test_ce_recovered_is_one_for_a_perfect_reconstruction(model):
    class Identity:
        class cfg:
            class metadata:
                hook_name = "blocks.0.hook_resid_post"

        def encode(self, x):
            return x

        def decode(self, f):
            return f

    tokens = torch.randint(1, 30, (8, 6))
    out = ce_loss_recovered(model, Identity(), tokens, pad_id=0)
    assert abs(out["ce_loss_recovered"] - 1) < 1e-5 and abs(out["ce_with_sae"] - out["ce_clean"]) < 1e-5


def test_capture_shapes_and_hook_z_flattening(model):
    tokens = torch.randint(1, 30, (10, 7))
    tokens[:, 5:] = 0  # padding
    acts = capture_activations(model, tokens, 0, ["blocks.1.attn.hook_z", "blocks.0.hook_resid_pre"], n_tokens=30)
    assert acts["blocks.1.attn.hook_z"].shape == (30, 16) and acts["blocks.0.hook_resid_pre"].shape == (30, 16)
    _, cache = model.run_with_cache(tokens[:1])
    assert torch.allclose(acts["blocks.0.hook_resid_pre"][0], cache["blocks.0.hook_resid_pre"][0, 1])  # BOS skipped
    with pytest.raises(ZooError, match="only 40 tokens"):
        capture_activations(model, tokens, 0, ["blocks.0.hook_resid_pre"], n_tokens=1000)


def test_default_zoo_covers_every_site(model):
    specs = default_zoo(model, widths=(2, 4))
    resid = {s.hook for s in specs if "resid" in s.hook and "resid_mid" not in s.hook}
    assert resid == {"blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    assert {s.architecture for s in specs if s.hook in resid} == {"standard", "topk", "jumprelu"}
    assert {s.d_sae for s in specs if s.hook in resid} == {32, 64}
    # TopK resid_mid SAEs complete the TopK family's brackets around every sub-layer (for projection)
    mid = [s for s in specs if "resid_mid" in s.hook]
    assert {s.hook for s in mid} == {"blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"}
    assert {(s.architecture, s.d_sae) for s in mid} == {("topk", 32)}
    for layer in range(2):
        for site in ("hook_attn_out", "hook_mlp_out", "attn.hook_z"):
            assert f"blocks.{layer}.{site}" in {s.hook for s in specs}
    assert hook_d_in(model, "blocks.0.attn.hook_z") == 16


def test_spec_for_missing_hook_fails_with_closest_names(model):
    with pytest.raises(ZooError, match="no hook 'blocks.7.hook_resid_post'.*closest"):
        validate_specs(model, [SAESpec(hook="blocks.7.hook_resid_post")])
    with pytest.raises(ZooError, match="duplicate"):
        validate_specs(model, [SAESpec(hook="blocks.0.hook_resid_post")] * 2)
