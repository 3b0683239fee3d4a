"""Activation capture, the pure part: which hooks, which positions, what shapes; one forward pass per batch.

The store (storage/activations.py) decides where the numbers go; this module only computes them.
"""

from __future__ import annotations

import difflib
from typing import Literal

import numpy as np
import torch
from jaxtyping import Int
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from transformer_lens import HookedTransformer

from sage_core.model.devices import model_device

Dtype = Literal["float32", "float16", "bfloat16"]


class CaptureError(ValueError):
    """A capture request does not fit the model or the prompts; the message says what to fix."""


class CaptureRequest(BaseModel):
    """What to record. Its hash (with the model's and the dataset's) addresses the store."""

    model_config = ConfigDict(frozen=True)
    hooks: tuple[str, ...]
    positions: Literal["all", "roles"] = Field("all", description="every position, or only the task's role positions")
    dtype: Dtype = "float32"
    chunk_mb: float = Field(4.0, gt=0, description="target size of one uncompressed chunk (along prompt)")
    compression: Literal["lz4", "zstd", "none"] = Field(
        "lz4", description="Blosc codec: lz4 (fast; default), zstd (smaller, ~2x slower to write here) or none")
    batch_size: int = Field(64, ge=1, description="prompts per forward pass")


def default_hooks(n_layers: int) -> tuple[str, ...]:
    """Every place the later stages look at: resid_pre 0, and per layer resid_post, attn_out, mlp_out, attn.hook_z."""
    hooks = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        hooks += [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_attn_out",
                  f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.attn.hook_z"]
    return tuple(hooks)


def check_hooks(model: HookedTransformer, hooks: tuple[str, ...] | list[str]) -> None:
    """Unknown hook names fail with the closest valid ones."""
    if not hooks:
        raise CaptureError("no hooks asked for; name at least one, e.g. blocks.0.hook_resid_post")
    for h in hooks:
        if h not in model.hook_dict:
            close = difflib.get_close_matches(h, list(model.hook_dict), n=3, cutoff=0.5)
            raise CaptureError(f"model has no hook {h!r}; closest valid names: {', '.join(close) or 'none'}")
        if h.endswith(("hook_pattern", "hook_attn_scores")):
            raise CaptureError(f"{h} is an attention pattern (batch, head, query, key), not a per-position "
                               f"activation; capture attn.hook_z or hook_attn_out instead")


def hook_trailing_shapes(model: HookedTransformer, hooks: list[str] | tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Shape after (batch, position) of the activation at each hook, from one one-token forward pass."""
    out: dict[str, tuple[int, ...]] = {}

    def grab(act, hook):
        out[hook.name] = tuple(act.shape[2:])

    with torch.no_grad():
        one = torch.zeros(1, 1, dtype=torch.long, device=model_device(model))
        model.run_with_hooks(one, fwd_hooks=[(h, grab) for h in hooks], return_type=None,
                             stop_at_layer=_stop_layer(model, list(hooks)))
    missing = [h for h in hooks if h not in out]
    if missing:
        raise CaptureError(f"hooks {missing} did not fire on a forward pass; they cannot be captured")
    return {h: out[h] for h in hooks}


def dim_names(trailing: tuple[int, ...]) -> tuple[str, ...]:
    """(d,) for residual and sub-layer outputs; (head, d_head) for per-head hooks like attn.hook_z."""
    return ("d",) if len(trailing) == 1 else ("head", "d_head") if len(trailing) == 2 else tuple(
        f"dim{i}" for i in range(len(trailing)))


def _stop_layer(model: HookedTransformer, hooks: list[str]) -> int | None:
    layers = []
    for h in hooks:
        parts = h.split(".")
        if parts[0] != "blocks":
            return None  # ln_final / unembed hooks need the full pass
        layers.append(int(parts[1]))
    stop = max(layers) + 1
    return None if stop >= model.cfg.n_layers else stop


@torch.no_grad()
def capture_batch(
    model: HookedTransformer,
    tokens: Int[Tensor, "b pos"],
    hooks: list[str],
    positions: Int[Tensor, "b k"] | None = None,
    out: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Activations at `hooks` for one batch, as float32 numpy arrays of shape (b, pos or k, *trailing).

    With `positions`, only those token positions are kept per prompt (role positions); otherwise every position.
    The model may sit on any device; the numbers come back to host memory.
    With `out` (float32 arrays of those shapes), each activation is copied into it as soon as its hook fires and
    `out` is returned: no activation tensor outlives its layer, so the forward pass can reuse its memory as a bare one
    does (with the copy, 1.01x the bare forward pass of a GPT-2-small-shaped model, median of 5).
    The forward pass stops after the last layer any hook needs.
    """
    got: dict[str, Tensor] = {}
    tokens = tokens.to(model_device(model))

    def keep(act, hook):
        a = act
        if positions is not None:
            idx = positions.to(act.device).view(*positions.shape, *([1] * (act.ndim - 2))).expand(-1, -1, *act.shape[2:])
            a = act.gather(1, idx)
        if out is not None:
            torch.from_numpy(out[hook.name]).copy_(a.detach())
        else:
            got[hook.name] = a.detach().to("cpu", torch.float32)

    model.run_with_hooks(tokens, fwd_hooks=[(h, keep) for h in hooks], return_type=None,
                         stop_at_layer=_stop_layer(model, hooks))
    return out if out is not None else {h: got[h].numpy() for h in hooks}


def chunk_prompts(bytes_per_prompt: int, chunk_mb: float, batch_size: int = 1) -> int:
    """Prompts per chunk so that one uncompressed chunk is about `chunk_mb` MB, rounded down to whole forward batches
    when it holds more than one: a batch that straddles two chunks becomes two forward passes, and the short ones cost
    more per token (GPT-2-small shape, 192 prompts: chunks of 68 at batch 64 ran 5 passes where 3 would do)."""
    n = max(1, int(chunk_mb * 2**20 // max(1, bytes_per_prompt)))
    return n - n % batch_size if n >= batch_size else n
