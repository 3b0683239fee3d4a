"""Mapping an SAE onto a cross-section (docs/METHOD.md §5): native, projection, or plain difference.

Every mapping yields the same object, a `SectionCodes`: per-prompt codes f (n, m), mapped feature directions D (m, d)
and a bias b (d,) in the cross-section's own space, so the reconstruction is f @ D + b and every metric treats native
and mapped SAEs alike.

- native: the SAE reads the cross-section's hook (for an `attn.hook_z` SAE at a head, the head's slice of its decoder).
- projection: a sub-layer's output is an additive write into the residual stream, so it is reconstructed as
  P_c(SAE_after(resid after) - SAE_before(resid before)). The codes are [f_after, f_before] and the directions
  [D_after, -D_before], both mapped by P_c. For attn_out / mlp_out, P_c is the orthogonal projection onto the
  component's write subspace (the row space of W_O stacked over heads, or of W_out); for one head's `hook_z` it is the
  least-squares coordinates in that head's write subspace, r -> r @ pinv(W_O[h]) (d_model -> d_head), i.e. P_c
  expressed in the head's own basis.
- difference: the same without P_c (only where the cross-section lives in the residual basis: attn_out, mlp_out).

Devices: a write map is computed (in float64) where the model's weights sit, an affine decoder where the SAE sits,
and a `SectionCodes` keeps its tensors where they were given.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from sage_core.ground_truth.cross_section import CrossSection
from sage_core.model.devices import sae_device

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer

Mapping = Literal["native", "projection", "difference"]
_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z)$")


class MappingError(ValueError):
    """An SAE cannot be mapped onto a cross-section as asked."""


class SectionCodes(BaseModel):
    """An SAE seen at one cross-section: reconstruction = codes @ decoder + bias."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    codes: Float[Tensor, "n m"]
    decoder: Float[Tensor, "m d"]
    bias: Float[Tensor, " d"]
    active: Bool[Tensor, "n m"] | None = None  # what interpretability counts as "feature active"; None = codes > 0

    def reconstruction(self) -> Float[Tensor, "n d"]:
        return self.codes @ self.decoder + self.bias

    def activity(self) -> Bool[Tensor, "n m"]:
        return self.codes > 0 if self.active is None else self.active

    def rows(self, idx) -> SectionCodes:
        """The same SAE on a subset of prompts (idx: row indices, e.g. a read-only numpy array from polars)."""
        i = torch.as_tensor(np.array(idx), dtype=torch.long, device=self.codes.device)
        return self.model_copy(update={"codes": self.codes[i], "active": None if self.active is None else self.active[i]})


def parse_hook(hook: str) -> tuple[int, str]:
    m = _HOOK.match(hook)
    if not m:
        raise MappingError(f"hook {hook!r} is not a residual or sub-layer hook SAGE can map")
    return int(m.group(1)), m.group(2)


def canonical_hook(hook: str) -> str:
    """resid_pre of layer L > 0 is the same tensor as resid_post of layer L - 1: name it one way."""
    if not _HOOK.match(hook):
        return hook
    layer, site = parse_hook(hook)
    if site == "hook_resid_pre" and layer > 0:
        return f"blocks.{layer - 1}.hook_resid_post"
    return hook


def bracket(section_hook: str) -> tuple[str, str]:
    """The residual hooks just before and just after the sub-layer that writes `section_hook`."""
    layer, site = parse_hook(section_hook)
    if site in ("hook_attn_out", "attn.hook_z"):
        return canonical_hook(f"blocks.{layer}.hook_resid_pre"), f"blocks.{layer}.hook_resid_mid"
    if site == "hook_mlp_out":
        return f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_resid_post"
    raise MappingError(f"{section_hook} is a residual-stream place: residual SAEs map onto it natively")


def sublayer_of(before: str, after: str) -> str:
    """The sub-layer hook (attn_out or mlp_out) that a bracket (the residual hooks just before and after) encloses."""
    for site in ("hook_attn_out", "hook_mlp_out"):
        layer = parse_hook(after)[0]
        hook = f"blocks.{layer}.{site}"
        if bracket(hook) == (canonical_hook(before), canonical_hook(after)):
            return hook
    raise MappingError(f"({before}, {after}) does not enclose a sub-layer: give the residual hooks just before and "
                       "just after one attention or MLP sub-layer")


def projection_is_difference(model: HookedTransformer, before: str, after: str, tol: float = 1e-5) -> bool:
    """Whether the `projection` mapping across the bracket (before, after) equals the `difference` mapping: P_c of
    the enclosed sub-layer is the identity (its stacked W_O or W_out has rank d_model, so its write subspace is the
    whole residual stream), to within `tol` in every entry. Where it is, the two score identically at attn_out /
    mlp_out, and `projection` alone also reaches the heads (attn.hook_z), so one unit says everything."""
    hook = sublayer_of(before, after)
    q = write_map(model, CrossSection(hook=hook, role="-"), "projection").double()
    return bool((q - torch.eye(q.shape[0], dtype=q.dtype, device=q.device)).abs().max().item() <= tol)


def is_sublayer(hook: str) -> bool:
    return bool(_HOOK.match(hook)) and parse_hook(hook)[1] in ("hook_attn_out", "hook_mlp_out", "attn.hook_z")


def write_map(model: HookedTransformer, section: CrossSection, mapping: Mapping) -> Float[Tensor, "d_model d"]:
    """Q such that a residual-space vector r maps to the cross-section's space as r @ Q (P_c, or identity)."""
    layer, site = parse_hook(section.hook)
    block = model.blocks[layer]
    if site == "attn.hook_z":
        if mapping == "difference":
            raise MappingError(f"{section.label} lives in a head's d_head basis: use mapping 'projection'")
        if section.head is None:
            raise MappingError(f"{section.label}: an attn.hook_z cross-section needs a head")
        return torch.linalg.pinv(block.attn.W_O[section.head].detach().double()).float()  # (d_model, d_head)
    d = model.cfg.d_model
    if mapping == "difference":
        return torch.eye(d, device=block.attn.W_O.device)
    w = block.attn.W_O.detach().reshape(-1, d) if site == "hook_attn_out" else block.mlp.W_out.detach()
    w = w.double()
    return (torch.linalg.pinv(w) @ w).float()  # orthogonal projector onto the row space: the write subspace


def native(codes: Float[Tensor, "n m"], decoder: Float[Tensor, "m d_in"], bias: Float[Tensor, " d_in"],
           section: CrossSection, d_head: int | None = None) -> SectionCodes:
    """An SAE at the cross-section's own hook; for a head of `attn.hook_z` (flat input), that head's slice."""
    if section.head is not None:
        if d_head is None:
            raise MappingError("a head cross-section needs d_head to slice the SAE's flat hook_z decoder")
        sl = slice(section.head * d_head, (section.head + 1) * d_head)
        decoder, bias = decoder[:, sl], bias[sl]
    return SectionCodes(codes=codes, decoder=decoder, bias=bias)


def projected(after: tuple[Tensor, Tensor, Tensor], before: tuple[Tensor, Tensor, Tensor],
              q: Float[Tensor, "d_model d"]) -> SectionCodes:
    """(codes, decoder, bias) of the SAEs after and before a sub-layer -> P_c(SAE(after) - SAE(before)) as codes
    [f_after, f_before] with directions [D_after Q, -D_before Q] and bias (b_after - b_before) Q."""
    fa, da, ba = after
    fb, db, bb = before
    return SectionCodes(codes=torch.cat([fa, fb], 1), decoder=torch.cat([da @ q, -(db @ q)]), bias=(ba - bb) @ q)


@torch.no_grad()
def affine_decoder(sae, probes: int = 64) -> tuple[Float[Tensor, "m d_in"], Float[Tensor, " d_in"]]:
    """(directions, bias) with decode(f) = f @ directions + bias, read off any SAE with an affine decoder (SAELens'
    decoders are; scaling factors and normalisation folded in), on the SAE's device (`sae_device`).

    Where the SAE's own W_dec is those directions (SAELens' standard, TopK and JumpReLU decoders without run-time
    rescaling), it is taken as it is once `probes` random codes that together touch every feature once decode to
    f @ W_dec + bias within float32 rounding; otherwise the directions are read by decoding the unit codes (d_sae²·d_in
    multiply-adds: 0.93 TFLOP at width 24576, what the check spares)."""
    dev = sae_device(sae)
    bias = sae.decode(torch.zeros(1, sae.d_sae, device=dev))[0]
    w = getattr(sae, "W_dec", None)
    if w is None and callable(getattr(sae, "decoder", None)):
        w = sae.decoder()
    if isinstance(w, Tensor) and tuple(w.shape) == (sae.d_sae, bias.shape[-1]):
        w = w.detach().to(device=bias.device, dtype=bias.dtype)
        codes = _partition_codes(sae.d_sae, min(probes, sae.d_sae), bias.device).to(bias.dtype)
        want = sae.decode(codes) - bias
        scale = want.abs().max().clamp_min(1e-12)
        if torch.allclose(codes @ w, want, rtol=1e-4, atol=1e-5 * float(scale)):
            return w.clone(), bias  # a copy: what scoring does with it never touches the SAE
    rows = [sae.decode(_unit_rows(i, min(i + 4096, sae.d_sae), sae.d_sae, dev)) - bias
            for i in range(0, sae.d_sae, 4096)]
    return torch.cat(rows), bias


def _partition_codes(n: int, k: int, device: torch.device) -> Tensor:
    """k codes over n features, each feature active (a positive random value) in exactly one of them: a decoder that
    differs from W_dec at any feature's row differs on some code."""
    gen = torch.Generator().manual_seed(0)
    out = torch.zeros(k, n)
    out[torch.randperm(n, generator=gen) % k, torch.arange(n)] = torch.rand(n, generator=gen) + 0.5
    return out.to(device)


def _unit_rows(start: int, stop: int, n: int, device: torch.device) -> Tensor:
    """Rows start..stop of the (n, n) identity, without building the whole identity (n² floats: 1 GiB at 16k)."""
    out = torch.zeros(stop - start, n, device=device)
    out[torch.arange(stop - start, device=device), torch.arange(start, stop, device=device)] = 1.0
    return out


def reaches(kind: str, mapping: str, sae_hook: str | None, spans: tuple[str, str] | None,
            section: CrossSection) -> bool:
    """Whether a scoring unit is scored at `section`: a control everywhere; a native SAE at its own hook (hook_z and
    its flattened forms alike); a projected pair of residual SAEs at the sub-layer places of the bracket it spans,
    the difference mapping only where the place is not one head. `spans`: the pair's bracket (`bracket`)."""
    if kind != "trained":
        return True
    if mapping == "native":
        return canonical_hook(section.hook) == canonical_hook(sae_hook)
    if not is_sublayer(section.hook) or bracket(section.hook) != spans:
        return False
    return mapping == "projection" or section.head is None
