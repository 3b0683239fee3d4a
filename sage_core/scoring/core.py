"""Core metrics of one SAE on background text (like SAEBench's core eval): the SAE's reconstruction spliced into the
model at its hook, at every real position but BOS.

- CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), zero = the hook's activation zero-ablated;
- KL = mean over real next-token positions of KL(p_clean || p_sae);
- explained variance, L0, dead share (never-active latents) and L2 ratio (mean ||x_hat|| / ||x||) of the SAE on those
  positions.

Everything that does not depend on the SAE is a `CoreReference`, computed once per model, hook and text: the
residual entering the hook's block, the clean and zero-ablated CE, and what KL needs of the clean pass. KL needs the
clean distribution p at every position (V floats: 26 GB for 131072 tokens of GPT-2), but with logits z = h W_U + b_U
it is linear in p:  KL(p || q) = sum p log p - sum p z_q + logsumexp(z_q) = sum p log p - p.b_U - h_q.(W_U p)
+ logsumexp(z_q).  So the reference keeps per position the expected unembedding W_U p (d_model floats) and one scalar,
and an SAE's core metrics are its one spliced pass from the hook's block. A model whose logits are not affine in h (a
logit soft cap, as Gemma 2's) keeps no such terms: its clean pass runs again with each SAE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sage_core.model.devices import model_device
from sage_core.model.transformer import final_norm, real_mask, start_block, trim_padding, unembed
from sage_core.zoo.train import ce_recovered

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer


@dataclass
class CoreBatch:
    """One batch of the text, on the CPU: its tokens (trailing padding trimmed), the residual entering the hook's
    block (None where passes start at the tokens), and, where logits are affine in the final residual, the clean
    pass's expected unembedding W_U p at each next-token position and sum over real positions of (p log p - p.b_U)."""

    tokens: Int[Tensor, "b pos"]
    resid: Float[Tensor, "b pos d"] | None
    expected_unembed: Float[Tensor, "b pos1 d"] | None
    kl_const: float


@dataclass
class CoreReference:
    """What core metrics need beyond the SAE, for one model, hook and text (`core_reference`)."""

    hook: str
    start: int
    batches: list[CoreBatch]
    ce_clean: float
    ce_zero: float
    n_pred: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for b in self.batches
                   for t in (b.tokens, b.resid, b.expected_unembed) if t is not None)


def affine_logits(model: HookedTransformer) -> bool:
    """Logits = h W_U + b_U of the final norm's output h (no logit soft cap)."""
    return (getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0) <= 0


@torch.no_grad()
def core_reference(model: HookedTransformer, hook: str, tokens: Int[Tensor, "b pos"], pad_id: int,
                   batch_size: int = 128, ce_zero: float | None = None) -> CoreReference:
    """The clean and zero-ablated passes of `tokens` at `hook`, once (`ce_zero`: where the caller already has it, the
    zero-ablated pass is not run again)."""
    dev = model_device(model)
    start = start_block(model, [hook])
    affine = affine_logits(model)
    batches, clean_sum, zero_sum, n_pred = [], 0.0, 0.0, 0
    for i in range(0, len(tokens), batch_size):
        t = trim_padding(tokens[i : i + batch_size], pad_id).to(dev)
        real = real_mask(t, pad_id)
        keep = real.clone()
        keep[:, 0] = False  # BOS is neither replaced nor judged
        mask, target = real[:, 1:], t[:, 1:]
        resid = model(t, stop_at_layer=start) if start else None
        x = t if resid is None else resid
        lp = _logits(model, x, start, [])[:, :-1].log_softmax(-1)
        clean_sum += -(lp.gather(-1, target[..., None]).squeeze(-1)[mask]).sum().item()
        expected, const = None, 0.0
        if affine:
            p = lp.exp()
            expected = p @ model.unembed.W_U.T  # (b, pos-1, d_model)
            const = ((p * lp).sum(-1) - p @ model.unembed.b_U)[mask].double().sum().item()
            del p
        del lp
        if ce_zero is None:
            lz = _logits(model, x, start, [(hook, _zero_hook(keep))])[:, :-1].log_softmax(-1)
            zero_sum += -(lz.gather(-1, target[..., None]).squeeze(-1)[mask]).sum().item()
            del lz
        n_pred += int(mask.sum())
        batches.append(CoreBatch(tokens=t.cpu(), resid=None if resid is None else resid.cpu(),
                                 expected_unembed=None if expected is None else expected.cpu(), kl_const=const))
    n = max(n_pred, 1)
    return CoreReference(hook=hook, start=start, batches=batches, ce_clean=clean_sum / n,
                         ce_zero=zero_sum / n if ce_zero is None else ce_zero, n_pred=n_pred)


@torch.no_grad()
def core_metrics(
    model: HookedTransformer,
    hook: str,
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    d_sae: int,
    tokens: Int[Tensor, "b pos"],
    pad_id: int,
    batch_size: int = 128,
    reference: CoreReference | None = None,
) -> dict[str, float]:
    """`encode` / `decode` take flat (n, d_in) activations (hook_z flattened over heads) on the model's device and
    return there (a `LoadedSAE`'s do, wherever the SAE sits). `tokens` may be on the CPU. `reference`: these tokens'
    `core_reference` at this hook where the caller keeps it (scoring several SAEs at a hook computes it once)."""
    ref = reference if reference is not None else core_reference(model, hook, tokens, pad_id, batch_size)
    assert ref.hook == hook, f"a core reference at {ref.hook} handed to core metrics at {hook}"
    dev = model_device(model)
    sae_sum, kl_sum = 0.0, 0.0
    sse = sst_x2 = 0.0
    sum_x = None
    n_act, l0_sum, l2_sum = 0, 0.0, 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool, device=dev)
    for b in ref.batches:
        t = b.tokens.to(dev)
        real = real_mask(t, pad_id)
        keep = real.clone()
        keep[:, 0] = False
        mask, target = real[:, 1:], t[:, 1:]
        stats: dict[str, Tensor] = {}

        def splice(a, hook, stats=stats, keep=keep):  # noqa: ARG001 - TransformerLens passes hook= by keyword
            flat = a.reshape(a.shape[0] * a.shape[1], -1)
            f = encode(flat)
            recon = decode(f).reshape(a.shape)
            m = keep.reshape(-1)
            stats["x"], stats["r"], stats["f"] = flat[m], recon.reshape(flat.shape)[m], f[m]
            out = a.clone()
            out[keep] = recon[keep].to(a.dtype)
            return out

        x = t if b.resid is None else b.resid.to(dev)
        h = final_norm(model, _final_resid(model, x, ref.start, [(hook, splice)]))
        z = unembed(model, h)[:, :-1]
        lse = z.logsumexp(-1)
        sae_sum += (lse - z.gather(-1, target[..., None]).squeeze(-1))[mask].sum().item()
        if b.expected_unembed is not None:
            dot = (h[:, :-1].double() * b.expected_unembed.to(dev, torch.float64)).sum(-1)
            kl_sum += b.kl_const + (lse.double() - dot)[mask].sum().item()
        else:  # the clean pass again (logits not affine in h)
            lp_c = _logits(model, x, ref.start, [])[:, :-1].log_softmax(-1)
            lp_s = z - lse[..., None]
            kl_sum += (lp_c.exp() * (lp_c - lp_s)).sum(-1)[mask].sum().item()
        xs, r, f = stats["x"].double(), stats["r"].double(), stats["f"]
        sse += (xs - r).pow(2).sum().item()
        sst_x2 += xs.pow(2).sum().item()
        sum_x = xs.sum(0) if sum_x is None else sum_x + xs.sum(0)
        n_act += len(xs)
        l0_sum += (f != 0).sum().item()
        norm = xs.norm(dim=1)
        l2_sum += torch.where(norm > 0, r.norm(dim=1) / norm.clamp_min(1e-300), 1.0).sum().item()
        fired |= (f != 0).any(0).to(dev)
    sst = sst_x2 - (sum_x.pow(2).sum().item() / max(n_act, 1))
    n = max(ref.n_pred, 1)
    sae = sae_sum / n
    return {
        "ce_clean": ref.ce_clean, "ce_with_sae": sae, "ce_zero_ablation": ref.ce_zero,
        "ce_loss_recovered": ce_recovered(ref.ce_clean, ref.ce_zero, sae),
        "kl": kl_sum / n,
        "core_explained_variance": 1 - sse / max(sst, 1e-12),
        "core_l0": l0_sum / max(n_act, 1),
        "dead_share": 1 - fired.float().mean().item(),
        "l2_ratio": l2_sum / max(n_act, 1),
    }


def _final_resid(model: HookedTransformer, x: Tensor, start: int, hooks: list) -> Tensor:
    """The residual after the last block, from the tokens (`start` 0) or from the residual entering block `start`."""
    n = model.cfg.n_layers
    if not start:
        return model.run_with_hooks(x, fwd_hooks=hooks, stop_at_layer=n)
    return model.run_with_hooks(x, fwd_hooks=hooks, start_at_layer=start, stop_at_layer=n)


def _logits(model: HookedTransformer, x: Tensor, start: int, hooks: list) -> Tensor:
    return unembed(model, final_norm(model, _final_resid(model, x, start, hooks)))


def _zero_hook(keep: Tensor) -> Callable:
    def zero(a, hook):  # noqa: ARG001 - TransformerLens passes hook= by keyword
        out = a.clone()
        out[keep] = 0
        return out

    return zero
