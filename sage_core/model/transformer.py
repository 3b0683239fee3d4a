"""The built-in task model: a small GPT-style `HookedTransformer`, its training loop and its task metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from sage_core.model.devices import model_device

if TYPE_CHECKING:  # imported where a model is built: TransformerLens costs ~8 s, and configs are read everywhere
    from transformer_lens import HookedTransformer, HookedTransformerConfig


class ModelConfig(BaseModel):
    """Architecture of the built-in model (becomes a `HookedTransformerConfig`)."""

    model_config = ConfigDict(frozen=True)
    name: str = "sage-tiny"
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 256
    n_ctx: int = 32
    act_fn: str = "gelu"
    seed: int = 0

    def hooked_config(self, d_vocab: int) -> HookedTransformerConfig:
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            model_name=self.name, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            d_head=self.d_head, d_mlp=self.d_mlp, n_ctx=self.n_ctx, d_vocab=d_vocab, act_fn=self.act_fn,
            normalization_type="LN", positional_embedding_type="standard", seed=self.seed,
            default_prepend_bos=True, device="cpu",
        )


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0


def build_model(cfg: ModelConfig, d_vocab: int, tokenizer=None, device: str = "cpu") -> HookedTransformer:
    """A freshly initialised model on `device`. The weights are drawn on the CPU and then moved, so a seed gives the
    same model on every device (a GPU's random stream differs from the CPU's)."""
    from transformer_lens import HookedTransformer

    torch.manual_seed(cfg.seed)
    model = HookedTransformer(cfg.hooked_config(d_vocab), tokenizer=tokenizer, move_to_device=False)
    return model if device == "cpu" else model.to(device, print_details=False)


def real_mask(tokens: Int[Tensor, "b pos"], pad_id: int) -> Tensor:
    """(b, pos) bool: True up to each row's last non-pad token. Counting `tokens != pad` would drop BOS wherever the
    pad token is BOS (GPT-2 pads with <|endoftext|>, which is also its BOS)."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    last = torch.where(tokens != pad_id, pos, 0).max(1).values  # position 0 is BOS in every SAGE sequence
    return pos[None, :] <= last[:, None]


def trim_padding(tokens: Int[Tensor, "b pos"], pad_id: int) -> Int[Tensor, "b pos2"]:
    """Drop trailing columns that are padding in every row (shorter sequences, same results: attention is causal)."""
    return tokens[:, : int(real_mask(tokens, pad_id).sum(1).max())]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> Int[Tensor, "n pos"]:
    """Right-pad token lists into one tensor (causal attention: padding never affects the real positions). On the CPU:
    callers move it to the model they run."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s[:length])
    return out


def start_block(model: HookedTransformer, hooks: Sequence[str]) -> int:
    """The first block any of `hooks` sits in: a forward pass whose changes are all there can run the blocks before it
    once and start from their residual (`stop_at_layer` / `start_at_layer`). 0 where a hook is before the blocks, or
    where the model cannot start part-way: a shortformer's position embedding, or left padding (an attention mask)."""
    tok = getattr(model, "tokenizer", None)
    if model.cfg.positional_embedding_type == "shortformer" or getattr(tok, "padding_side", "right") == "left":
        return 0
    return min((int(h.split(".")[1]) if h.startswith("blocks.") else 0 for h in hooks), default=0)


def final_norm(model: HookedTransformer, resid: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """The final residual through the model's final norm (the unembedding's input)."""
    return model.ln_final(resid) if model.cfg.normalization_type is not None else resid


def unembed(model: HookedTransformer, h: Float[Tensor, "... d"]) -> Float[Tensor, "... vocab"]:
    """Logits of the unembedding's input `h` as the model's forward computes them (W_U, b_U, then any logit soft
    cap), without TransformerLens' `Unembed`, which copies W_U transposed on every call (154 MB for GPT-2 small: a
    patched pass at a few positions spent most of its time there)."""
    logits = F.linear(h, model.unembed.W_U.T, model.unembed.b_U)
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def lm_loss(model: HookedTransformer, tokens: Int[Tensor, "b pos"], pad_id: int) -> Tensor:
    """Next-token cross-entropy, ignoring targets that are padding."""
    logits = model(tokens, return_type="logits")
    targets = tokens[:, 1:].to(logits.device, copy=True)  # TransformerLens moved the tokens; the targets follow
    targets[targets == pad_id] = -100
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def train_model(
    model: HookedTransformer,
    tokens: Int[Tensor, "n pos"],
    pad_id: int,
    cfg: TrainConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_loss: Callable[[int, float], None] | None = None,
) -> list[float]:
    """AdamW with linear warmup and cosine decay; deterministic under `cfg.seed`. Returns the loss per step.
    After each step: `on_step(done, total)` (progress) and `on_loss(step, loss)` (step from 0, for logs).
    Trains where the model sits (`build_model(..., device=)`); the batch order is drawn on the CPU, so it is the same
    on every device."""
    dev = model_device(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    perm = torch.randperm(len(tokens), generator=gen)
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(perm):
            perm, cursor = torch.randperm(len(tokens), generator=gen), 0
        batch = tokens[perm[cursor : cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        # trim trailing all-pad columns: shorter sequences, same loss
        batch = trim_padding(batch, pad_id).to(dev)
        loss = lm_loss(model, batch, pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_loss is not None:
            on_loss(step, losses[-1])
        if on_step is not None:
            on_step(step + 1, cfg.steps)
    model.eval()
    return losses


@torch.no_grad()
def final_logits(model: HookedTransformer, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 256) -> Tensor:
    """Logits at each sequence's last real position, shape (n, d_vocab), on the model's device."""
    out = []
    dev = model_device(model)
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        toks = pad_sequences(chunk, pad_id).to(dev)
        logits = model(toks, return_type="logits")
        last = torch.as_tensor([len(s) - 1 for s in chunk], device=logits.device)
        out.append(logits[torch.arange(len(chunk), device=logits.device), last])
    return torch.cat(out)


def answer_metrics(logits: Tensor, answer: Tensor, competing: Tensor) -> dict[str, float]:
    """accuracy = share where the answer outranks the competing answer; logit_diff = mean of their difference."""
    answer, competing = answer.to(logits.device), competing.to(logits.device)
    ld = logits.gather(1, answer[:, None]).squeeze(1) - logits.gather(1, competing[:, None]).squeeze(1)
    top1 = (logits.argmax(-1) == answer).float().mean().item()
    return {"accuracy": (ld > 0).float().mean().item(), "logit_diff": ld.mean().item(), "top1": top1, "n": len(ld)}


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    r = fn(*args, **kwargs)
    return r, time.perf_counter() - t
