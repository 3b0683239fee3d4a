"""Activation capture, the pure part: which hooks, which positions, what shapes and chunk size a store gets
(`capture_layout`); one forward pass per batch (`capture_batch`), and a chunk of prompts into host buffers
(`capture_chunk`, `chunk_buffer`).

The store (storage/activations.py, storage/capture.py) decides where the numbers go, and the engine that streams
chunks into it (tasks/capture.py) when; this module only computes them.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Int
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from sage_core.model.devices import model_device

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer

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


class CaptureLayout(BaseModel):
    """What a store for one request on one prompt table holds per prompt: each hook's trailing shape and its dimension
    names, and how many prompts one chunk holds."""

    model_config = ConfigDict(frozen=True)
    hook_shapes: dict[str, tuple[tuple[int, ...], tuple[str, ...]]]
    chunk_prompts: int


def capture_layout(model: HookedTransformer, request: CaptureRequest, width: int, n_roles: int) -> CaptureLayout:
    """Check the request against the model and the prompts (padded to `width` tokens, with `n_roles` role
    positions), then lay out its store: the hooks' shapes (one one-token forward pass) and chunks of about
    `request.chunk_mb` MB uncompressed at the widest hook, in whole forward batches."""
    check_hooks(model, request.hooks)
    if request.positions == "roles" and not n_roles:
        raise ValueError("positions='roles' needs a prompt table with pos_<role> columns; use positions='all'")
    if width > model.cfg.n_ctx:
        raise ValueError(f"prompts of {width} tokens exceed the model's n_ctx={model.cfg.n_ctx}")
    shapes = hook_trailing_shapes(model, request.hooks)
    n_pos = n_roles if request.positions == "roles" else width
    itemsize = 4 if request.dtype == "float32" else 2
    per_prompt = max(n_pos * int(np.prod(s)) * itemsize for s in shapes.values())
    return CaptureLayout(hook_shapes={h: (s, dim_names(s)) for h, s in shapes.items()},
                         chunk_prompts=chunk_prompts(per_prompt, request.chunk_mb, request.batch_size))


def capture_chunk(model: HookedTransformer, tokens: np.ndarray, lengths: np.ndarray, role_pos: np.ndarray | None,
                  out: dict[str, np.ndarray], batch_size: int) -> None:
    """Fill `out` (a float32 buffer per hook, one row per prompt) with the activations of one chunk's prompts
    (`tokens` padded, their `lengths`; with `role_pos`, only those positions), in forward batches of `batch_size`.
    Without role positions, positions past a prompt's length are zeroed: deterministic, and it compresses to
    nothing."""
    tok = torch.as_tensor(tokens, dtype=torch.long)
    pos = torch.as_tensor(role_pos, dtype=torch.long) if role_pos is not None else None
    hooks = list(out)
    for b in range(0, tok.shape[0], batch_size):
        sl = slice(b, b + batch_size)
        capture_batch(model, tok[sl], hooks, pos[sl] if pos is not None else None,
                      out={h: a[sl] for h, a in out.items()})
    if pos is None:
        pad = np.arange(tok.shape[1])[None, :] >= lengths[:, None]
        for a in out.values():
            a[pad] = 0


def chunk_buffer(shape: tuple[int, ...], model: HookedTransformer) -> np.ndarray:
    """A float32 host buffer for one chunk of one hook; page-locked when the model runs on a CUDA GPU, where copies
    from the device into pageable memory go through a staging buffer at a fraction of the link's speed."""
    if torch.device(model.cfg.device or "cpu").type == "cuda":
        return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
    return np.empty(shape, np.float32)
