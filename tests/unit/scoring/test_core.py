"""Core metrics against whole forward passes by hand: the reference computed apart (once per model, hook and text)
changes no figure, and KL from the clean pass's expected unembedding equals KL over the full distributions."""

from __future__ import annotations

import pytest
import torch

from sage_core.model.transformer import ModelConfig, build_model, final_norm, real_mask, unembed
from sage_core.scoring.core import core_metrics, core_reference

PAD = 1


def _model(soft_cap: float = 0.0):
    torch.manual_seed(0)
    m = build_model(ModelConfig(name="t", d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, n_ctx=16), 40)
    m.cfg.output_logits_soft_cap = soft_cap  # Gemma 2's logit soft cap: logits no longer affine in the final norm
    return m


@pytest.fixture(scope="module")
def model():
    return _model()


def _tokens(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    t = torch.randint(3, 40, (9, 12))
    t[2, 8:] = PAD  # right padding
    t[5, 4:] = PAD
    return t


def _sae(seed: int = 3):
    torch.manual_seed(seed)
    w = torch.randn(16, 24)
    return (lambda x: torch.relu(x @ w)), (lambda f: f @ w.T / 24)


def _by_hand(model, hook: str, tokens: torch.Tensor, enc, dec) -> dict[str, float]:
    """CE (clean, with the SAE, zero-ablated) and KL by whole forward passes and the full softmax."""
    real = real_mask(tokens, PAD)
    keep = real.clone()
    keep[:, 0] = False
    mask, target = real[:, 1:], tokens[:, 1:]

    def splice(a, hook):  # noqa: ARG001
        out = a.clone()
        out[keep] = dec(enc(a[keep]))
        return out

    def zero(a, hook):  # noqa: ARG001
        out = a.clone()
        out[keep] = 0
        return out

    def lp(hooks):
        return model.run_with_hooks(tokens, fwd_hooks=hooks)[:, :-1].double().log_softmax(-1)

    def ce(lps):
        return -lps.gather(-1, target[..., None]).squeeze(-1)[mask].mean().item()

    clean, sae = lp([]), lp([(hook, splice)])
    kl = (clean.exp() * (clean - sae)).sum(-1)[mask].mean().item()
    return {"ce_clean": ce(clean), "ce_with_sae": ce(sae), "ce_zero_ablation": ce(lp([(hook, zero)])), "kl": kl}


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out", "hook_embed"])
def test_core_metrics_match_whole_passes_by_hand(model, hook):
    """Passes from the hook's block (blocks.1) or from the tokens (hook_embed); KL by the expected unembedding."""
    tokens, (enc, dec) = _tokens(1), _sae()
    got = core_metrics(model, hook, enc, dec, 24, tokens, pad_id=PAD, batch_size=4)
    want = _by_hand(model, hook, tokens, enc, dec)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert want["kl"] > 1e-3  # a real difference, not two equal distributions


def test_kl_when_logits_are_soft_capped():
    """A logit soft cap makes logits non-affine in the final norm: the clean pass runs again and KL is still exact."""
    capped = _model(soft_cap=2.0)
    tokens, (enc, dec) = _tokens(4), _sae(5)
    hook = "blocks.1.hook_resid_pre"
    got = core_metrics(capped, hook, enc, dec, 24, tokens, pad_id=PAD, batch_size=4)
    want = _by_hand(capped, hook, tokens, enc, dec)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert core_reference(capped, hook, tokens, PAD).batches[0].expected_unembed is None


@pytest.mark.parametrize("cap", [0.0, 2.0])
def test_unembed_is_the_models_own(cap):
    m = _model(soft_cap=cap)
    tokens = _tokens(6)
    resid = m(tokens, stop_at_layer=m.cfg.n_layers)
    torch.testing.assert_close(unembed(m, final_norm(m, resid)), m(tokens), rtol=1e-5, atol=1e-5)


def test_a_reference_computed_apart_changes_nothing(model):
    """What the worker keeps per model, hook and text: the same figures as computing it inside, and handing in a
    known zero-ablation CE skips that pass without changing it."""
    tokens, (enc, dec) = _tokens(2), _sae(7)
    hook = "blocks.1.hook_resid_pre"
    ref = core_reference(model, hook, tokens, PAD, batch_size=4)
    inside = core_metrics(model, hook, enc, dec, 24, tokens, pad_id=PAD, batch_size=4)
    assert core_metrics(model, hook, enc, dec, 24, tokens, pad_id=PAD, reference=ref) == pytest.approx(inside, rel=1e-9)
    again = core_reference(model, hook, tokens, PAD, batch_size=4, ce_zero=ref.ce_zero)
    assert again.ce_zero == ref.ce_zero and again.ce_clean == pytest.approx(ref.ce_clean, rel=1e-9)
    assert ref.nbytes == sum(b.tokens.nbytes + b.resid.nbytes + b.expected_unembed.nbytes for b in ref.batches)
    other = core_reference(model, "blocks.0.hook_resid_pre", tokens, PAD)
    with pytest.raises(AssertionError, match="blocks.0.hook_resid_pre"):
        core_metrics(model, hook, enc, dec, 24, tokens, pad_id=PAD, reference=other)


def test_l2_ratio_is_the_mean_norm_ratio_of_reconstruction_to_input(model):
    """SAEBench's l2_ratio by hand: the activations the SAE sees at the hook (every real position but BOS), then
    mean ||dec(enc(x))|| / ||x||; an SAE that halves its input gives 0.5."""
    tokens, (enc, dec) = _tokens(8), _sae(9)
    hook = "blocks.1.hook_resid_pre"
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    keep = real_mask(tokens, PAD)
    keep[:, 0] = False
    x = cache[hook][keep]
    want = (dec(enc(x)).norm(dim=1) / x.norm(dim=1)).mean().item()
    got = core_metrics(model, hook, enc, dec, 24, tokens, pad_id=PAD, batch_size=4)
    assert got["l2_ratio"] == pytest.approx(want, rel=1e-5)
    half = core_metrics(model, hook, lambda a: a, lambda f: f / 2, 16, tokens, pad_id=PAD)
    assert half["l2_ratio"] == pytest.approx(0.5, rel=1e-6)
