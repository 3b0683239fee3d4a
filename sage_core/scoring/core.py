"""Core metrics of one SAE on background text (like SAEBench's core eval): the SAE's reconstruction spliced into the
model at its hook, at every real position but BOS.

- CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), zero = the hook's activation zero-ablated;
- KL = mean over real next-token positions of KL(p_clean || p_sae);
- explained variance, L0 and dead share (never-active latents) of the SAE on those positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from sage_core.model.devices import model_device
from sage_core.model.transformer import real_mask, start_block, trim_padding
from sage_core.zoo.train import ce_recovered


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
    ce_zero: float | None = None,
) -> dict[str, float]:
    """`encode` / `decode` take flat (n, d_in) activations (hook_z flattened over heads) on the model's device and
    return there (a `LoadedSAE`'s do, wherever the SAE sits). `tokens` may be on the CPU: each batch is moved.
    `ce_zero`: the zero-ablation CE of these tokens at this hook (`zero_ablation_ce`) where the caller has it: it
    does not depend on the SAE, so scoring several SAEs at a hook runs that pass once."""
    dev = model_device(model)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl_sum, n_pred = 0.0, 0
    sse = sst_x2 = 0.0
    sum_x = None
    n_act, l0_sum = 0, 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool, device=dev)
    for i in range(0, len(tokens), batch_size):
        t = tokens[i : i + batch_size]
        t = trim_padding(t, pad_id).to(dev)
        real = real_mask(t, pad_id)  # (b, pos)
        keep = real.clone()
        keep[:, 0] = False  # BOS is neither replaced nor judged
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

        run = _from_hook_block(model, t, hook)  # the blocks before the hook's run once for the passes
        clean_logits = run([])
        sae_logits = run([(hook, splice)])
        passes = [("clean", clean_logits), ("sae", sae_logits)]
        if ce_zero is None:
            passes.append(("zero", run([(hook, _zero_hook(keep))])))
        target = t[:, 1:]
        mask = real[:, 1:]
        log_probs = {}  # each pass's log-softmax once: over a 50257-token vocabulary it is most of the arithmetic
        for name, lg in passes:
            lp = log_probs[name] = lg[:, :-1].log_softmax(-1)
            ce[name] += -(lp.gather(-1, target[..., None]).squeeze(-1)[mask]).sum().item()
        lp_c, lp_s = log_probs["clean"], log_probs["sae"]
        kl = F.kl_div(lp_s, lp_c, log_target=True, reduction="none").sum(-1)
        kl_sum += kl[mask].sum().item()
        n_pred += int(mask.sum())
        x, r, f = stats["x"].double(), stats["r"].double(), stats["f"]
        sse += (x - r).pow(2).sum().item()
        sst_x2 += x.pow(2).sum().item()
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        n_act += len(x)
        l0_sum += (f != 0).sum().item()
        fired |= (f != 0).any(0).to(dev)
    sst = sst_x2 - (sum_x.pow(2).sum().item() / max(n_act, 1))
    clean, sae, zero_ = (ce[k] / max(n_pred, 1) for k in ("clean", "sae", "zero"))
    zero_ = zero_ if ce_zero is None else ce_zero
    return {
        "ce_clean": clean, "ce_with_sae": sae, "ce_zero_ablation": zero_,
        "ce_loss_recovered": ce_recovered(clean, zero_, sae),
        "kl": kl_sum / max(n_pred, 1),
        "core_explained_variance": 1 - sse / max(sst, 1e-12),
        "core_l0": l0_sum / max(n_act, 1),
        "dead_share": 1 - fired.float().mean().item(),
    }


def _from_hook_block(model: HookedTransformer, t: Tensor, hook: str) -> Callable[[list], Tensor]:
    """Logits of `t` with given hooks, every pass starting from one run of the blocks before `hook`'s (which no hook at
    `hook` can change)."""
    start = start_block(model, [hook])
    if not start:
        return lambda hooks: model.run_with_hooks(t, fwd_hooks=hooks)
    resid = model(t, stop_at_layer=start)
    return lambda hooks: model.run_with_hooks(resid, fwd_hooks=hooks, start_at_layer=start)


def _zero_hook(keep: Tensor) -> Callable:
    def zero(a, hook):  # noqa: ARG001 - TransformerLens passes hook= by keyword
        out = a.clone()
        out[keep] = 0
        return out

    return zero


@torch.no_grad()
def zero_ablation_ce(model: HookedTransformer, hook: str, tokens: Int[Tensor, "b pos"], pad_id: int,
                     batch_size: int = 128) -> float:
    """Mean next-token CE with the hook's activation zero-ablated at every real position but BOS (what
    `core_metrics` computes as `ce_zero_ablation`, the same batches summed the same way)."""
    dev = model_device(model)
    total, n_pred = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        t = trim_padding(tokens[i : i + batch_size], pad_id).to(dev)
        real = real_mask(t, pad_id)
        keep = real.clone()
        keep[:, 0] = False
        lp = _from_hook_block(model, t, hook)([(hook, _zero_hook(keep))])[:, :-1].log_softmax(-1)
        mask = real[:, 1:]
        total += -(lp.gather(-1, t[:, 1:, None]).squeeze(-1)[mask]).sum().item()
        n_pred += int(mask.sum())
    return total / max(n_pred, 1)
