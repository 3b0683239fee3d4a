"""The built-in SAE zoo: typed SAE specs, training with SAELens' own `SAETrainer`, and the zoo metrics.

Activations come in as tensors (the caller captures them once per hook and shares them across that hook's SAEs);
nothing here touches files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from sae_lens import (
    SAE,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    LoggingConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata
from torch import Tensor

from sage_core.model.devices import model_device, sae_device
from sage_core.model.transformer import real_mask, trim_padding
from sage_core.zoo.spec import SAESpec, ZooError

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer

def hook_d_in(model: HookedTransformer, hook: str) -> int:
    """Width of the activation an SAE at `hook` reads (hook_z is flattened over heads, as SAELens does)."""
    if hook not in model.hook_dict:
        import difflib

        close = difflib.get_close_matches(hook, list(model.hook_dict), n=3)
        raise ZooError(f"model has no hook {hook!r}; closest: {close or 'none'} (see model.hook_dict)")
    c = model.cfg
    if hook.endswith("attn.hook_z"):
        return c.n_heads * c.d_head
    if hook.endswith(("hook_resid_pre", "hook_resid_post", "hook_resid_mid", "hook_attn_out", "hook_mlp_out")):
        return c.d_model
    raise ZooError(f"hook {hook!r} is not an SAE site SAGE supports (resid, attn_out, mlp_out, attn.hook_z)")


def default_zoo(model: HookedTransformer, widths: tuple[int, ...] = (2, 4), sublayer: bool = True) -> list[SAESpec]:
    """Residual SAEs (3 architectures x len(widths)) at resid_pre 0 and every resid_post; TopK sub-layer SAEs and TopK
    resid_mid SAEs (width 2 x d_model)."""
    c = model.cfg
    resid = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(c.n_layers)]
    specs = [
        SAESpec(hook=h, architecture=arch, d_sae=w * c.d_model)
        for h in resid
        for arch in ("standard", "topk", "jumprelu")
        for w in widths
    ]
    for layer in range(c.n_layers if sublayer else 0):
        # resid_mid completes the TopK family's residual brackets, so it maps by projection onto every sub-layer place
        for h in (f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_z",
                  f"blocks.{layer}.hook_resid_mid"):
            specs.append(SAESpec(hook=h, architecture="topk", d_sae=2 * c.d_model))
    return specs


def validate_specs(model: HookedTransformer, specs: list[SAESpec]) -> None:
    """Fail before any training if a spec names a hook the model lacks or two specs collide."""
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ZooError(f"duplicate SAE specs: {sorted(dup)}; give them different widths or architectures")
    for s in specs:
        hook_d_in(model, s.hook)


def build_training_sae(spec: SAESpec, d_in: int, model_name: str, device: str = "cpu") -> TrainingSAE:
    """A fresh training SAE on `device`, initialised on the CPU and then moved: a seed gives the same initial weights
    on every device (a GPU's random stream differs from the CPU's)."""
    torch.manual_seed(spec.seed)
    common = dict(
        d_in=d_in,
        d_sae=spec.d_sae,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        # activation norms differ ~50x across hooks; SAELens rescales to E||x|| = sqrt(d_in) while training and folds
        # the factor back into the weights, so one set of sparsity coefficients serves every hook
        normalize_activations="expected_average_only_in",
        reshape_activations="hook_z" if spec.hook.endswith("hook_z") else "none",
        metadata=SAEMetadata(hook_name=spec.hook, model_name=model_name, hook_head_index=None, prepend_bos=True),
    )
    if spec.architecture == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=spec.l1_coefficient,
                                                            l1_warm_up_steps=50))
    elif spec.architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=spec.k, aux_loss_coefficient=1.0))
    else:
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            **common, l0_coefficient=spec.l0_coefficient, l0_warm_up_steps=50,
            jumprelu_init_threshold=spec.jumprelu_init_threshold, jumprelu_bandwidth=0.05,
            jumprelu_sparsity_loss_mode="step"))
    return sae if device == "cpu" else sae.to(device)  # SAELens' `to` also updates cfg.device


def _batches(acts: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled epochs over `acts` (SAETrainer pulls one batch per step). The order is drawn on the CPU (the same
    on every device) and gathers from `acts` where they sit."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=g).to(acts.device)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]]


def train_sae(spec: SAESpec, acts: Float[Tensor, "n d_in"], model_name: str, device: str = "cpu") -> TrainingSAE:
    """Train one SAE with SAELens' trainer on pre-captured activations (flattened over heads for hook_z), on `device`
    (a torch device name). The trained SAE comes back on the CPU, its cfg.device "cpu", ready to be saved."""
    if acts.ndim != 2:
        raise ZooError(f"expected (n, d_in) activations for {spec.name}, got shape {tuple(acts.shape)}")
    if len(acts) < spec.batch_size:
        raise ZooError(f"only {len(acts)} activations for {spec.name}; need at least batch_size={spec.batch_size}")
    sae = build_training_sae(spec, acts.shape[1], model_name, device)
    acts = acts.to(device)  # once, not per batch: the whole set is what one SAE trains on anyway
    lr = spec.lr
    steps = max(1, math.ceil(spec.epochs * len(acts) / spec.batch_size))
    cfg = SAETrainerConfig(
        total_training_samples=steps * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=min(50, steps // 10),
        lr_decay_steps=0,
        device=device,
        dead_feature_window=max(20, steps // 10),
        feature_sampling_window=10 * steps,
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(20, steps),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=_batches(acts, spec.batch_size, spec.seed))
    return trainer.fit().to("cpu")


@torch.no_grad()
def capture_activations(
    model: HookedTransformer, tokens: Int[Tensor, "n pos"], pad_id: int, hooks: list[str], n_tokens: int,
    batch_size: int = 256,
) -> dict[str, Float[Tensor, "n_tokens d_in"]]:
    """Activations at `hooks` for the first `n_tokens` real tokens (BOS and padding excluded), one pass per batch.

    hook_z is flattened over heads to (n, n_heads * d_head), as SAELens trains on it.
    """
    from sage_core.model.capture import capture_batch  # the one forward-pass-with-hooks of the project

    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    got = 0
    for i in range(0, len(tokens), batch_size):
        t = tokens[i : i + batch_size]
        t = trim_padding(t, pad_id)
        keep = real_mask(t, pad_id).cpu().numpy()
        keep[:, 0] = False
        acts = capture_batch(model, t, hooks)
        for h in hooks:
            a = torch.from_numpy(acts[h][keep])
            out[h].append(a.reshape(len(a), -1))
        got += int(keep.sum())
        if got >= n_tokens:
            break
    if got < n_tokens:
        raise ZooError(f"corpus has only {got} tokens, {n_tokens} asked for; lower n_tokens or grow the corpus")
    return {h: torch.cat(v)[:n_tokens].contiguous() for h, v in out.items()}



# -- metrics ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_metrics(sae: SAE, acts: Float[Tensor, "n d_in"], batch_size: int = 4096) -> dict[str, float]:
    """Explained variance (1 - SSE / total sum of squares about the mean), L0 and the share of never-active latents.

    `acts` are flat (n, d_in) even for hook_z SAEs.
    """
    reshaping = getattr(sae, "hook_z_reshaping_mode", False)
    if reshaping:
        sae.turn_off_forward_pass_hook_z_reshaping()
    dev = sae_device(sae)  # batches go to the SAE; the sums come back as Python floats
    try:
        sse, l0_sum = 0.0, 0.0
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=dev)
        for i in range(0, len(acts), batch_size):
            x = acts[i : i + batch_size].to(dev)
            f = sae.encode(x)
            sse += (sae.decode(f) - x).pow(2).sum().item()
            l0_sum += (f != 0).sum().item()
            fired |= (f != 0).any(0)
        sst = (acts - acts.mean(0)).pow(2).sum().item()
    finally:
        if reshaping:
            sae.turn_on_forward_pass_hook_z_reshaping()
    return {
        "explained_variance": 1 - sse / max(sst, 1e-12),
        "l0": l0_sum / len(acts),
        "dead_share": 1 - fired.float().mean().item(),
    }


def _keep_bos(orig: Tensor, new: Tensor) -> Tensor:
    """Splice `new` in at every position but BOS (SAEs are neither trained nor judged on the BOS token)."""
    new = new.clone()
    new[:, 0] = orig[:, 0]
    return new


@torch.no_grad()
def mean_ce(
    model: HookedTransformer, tokens: Int[Tensor, "b pos"], pad_id: int, hook: str | None = None, fn=None,
    batch_size: int = 256,
) -> float:
    """Mean next-token CE over `tokens`, optionally with `fn(activation)` replacing the activation at `hook`
    (at every position but BOS)."""
    from sage_core.model.transformer import lm_loss

    dev = model_device(model)
    hooks = [(hook, lambda a, hook: _keep_bos(a, fn(a)))] if hook else []  # noqa: ARG005 (TransformerLens passes hook=)
    total, n = 0.0, 0
    with model.hooks(fwd_hooks=hooks):
        for i in range(0, len(tokens), batch_size):
            t = tokens[i : i + batch_size]
            t = trim_padding(t, pad_id).to(dev)
            total += len(t) * lm_loss(model, t, pad_id).item()
            n += len(t)
    return total / n


def ce_recovered(clean: float, zero: float, with_sae: float) -> float:
    """(zero - sae) / (zero - clean): 1 = the SAE loses nothing, 0 = as bad as zero-ablating the hook."""
    return (zero - with_sae) / (zero - clean) if abs(zero - clean) > 1e-9 else float("nan")


def ce_loss_recovered(
    model: HookedTransformer, sae: SAE, tokens: Int[Tensor, "b pos"], pad_id: int,
    clean: float | None = None, zero: float | None = None,
) -> dict[str, float]:
    """CE with the SAE's reconstruction spliced in, against clean and zero-ablation. Pass `clean` / `zero` to reuse
    them across SAEs (clean is shared by all, zero by every SAE at one hook)."""
    hook = sae.cfg.metadata.hook_name
    clean = mean_ce(model, tokens, pad_id) if clean is None else clean
    zero = mean_ce(model, tokens, pad_id, hook, torch.zeros_like) if zero is None else zero
    dev = sae_device(sae)
    with_sae = mean_ce(model, tokens, pad_id, hook, lambda a: sae.decode(sae.encode(a.to(dev))).to(a.device))
    return {"ce_clean": clean, "ce_with_sae": with_sae, "ce_zero_ablation": zero,
            "ce_loss_recovered": ce_recovered(clean, zero, with_sae)}
