"""Any SAE, as SAGE sees it: a small protocol (encode / decode / W_dec, like SAEBench's), a wrapper that hides
SAELens' quirks (hook_z reshaping, dtypes, sparse codes), content hashes of the weights, and the checks that run
before any compute.

Pure: nothing here reads or writes files; `storage.sae_sources` resolves a user's SAE spec into a `LoadedSAE`.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from transformer_lens import HookedTransformer

HASH_LEN = 16


@runtime_checkable
class SAELike(Protocol):
    """What SAGE needs of an SAE. Any object with these (plus a hook name) counts as one.

    encode: (n, d_in) -> (n, d_sae) codes; decode: (n, d_sae) -> (n, d_in); W_dec: (d_sae, d_in).
    """

    W_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, f: Tensor) -> Tensor: ...


class SAECheckError(ValueError):
    """An SAE does not fit the model it is to be scored on, or its weights are broken; the message says what to do."""


# -- weights ------------------------------------------------------------------------------------------------------
def sae_tensors(sae: Any) -> dict[str, Tensor]:
    """Every weight tensor of an SAE: its `state_dict()` when it has one, else its tensor attributes."""
    if isinstance(sae, torch.nn.Module) or callable(getattr(sae, "state_dict", None)):
        try:
            sd = sae.state_dict()
        except Exception:  # an object whose state_dict is not torch's: fall back to attributes
            sd = None
        if isinstance(sd, dict) and sd:
            return {str(k): v for k, v in sd.items() if isinstance(v, Tensor)}
    attrs = dict(getattr(sae, "__dict__", {}))
    out = {k: v for k, v in attrs.items() if isinstance(v, Tensor)}
    if "W_dec" not in out and isinstance(getattr(sae, "W_dec", None), Tensor):  # a property or class attribute
        out["W_dec"] = sae.W_dec
    return out


def weights_hash(sae: Any) -> str:
    """sha256 over the SAE's weight tensors (name, dtype, shape and bytes), in sorted name order."""
    h = hashlib.sha256()
    for name, t in sorted(sae_tensors(sae).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:HASH_LEN]


def sae_hook_name(sae: Any) -> str | None:
    """The hook an SAE reads: `hook_name` on the object, else SAELens 6's `cfg.metadata.hook_name`
    (else the 5.x-style `cfg.hook_name`)."""
    name = getattr(sae, "hook_name", None)
    if isinstance(name, str) and name:
        return name
    cfg = getattr(sae, "cfg", None)
    meta = getattr(cfg, "metadata", None)
    for obj in (meta, cfg):
        name = getattr(obj, "hook_name", None) if obj is not None else None
        if isinstance(name, str) and name:
            return name
    return None


def sae_arch(sae: Any) -> str:
    """SAELens' architecture name ("standard", "topk", "jumprelu", ...), an `arch` attribute, or "custom"."""
    cfg = getattr(sae, "cfg", None)
    arch = getattr(cfg, "architecture", None)
    if callable(arch):
        try:
            arch = arch()
        except Exception:
            arch = None
    if not isinstance(arch, str):
        arch = getattr(sae, "arch", None)
    return arch if isinstance(arch, str) and arch else "custom"


# -- the wrapper --------------------------------------------------------------------------------------------------
class LoadedSAE(BaseModel):
    """One SAE, resolved and ready: flat float32 (n, d_in) in, (n, d_sae) codes out, whatever its origin.

    SAELens SAEs trained on `attn.hook_z` reshape (…, n_heads, d_head) inputs themselves; the wrapper turns that off
    (once, on the wrapped object), so `encode` always takes (n, n_heads * d_head) and `decode` returns it.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    hook: str
    sae: Any
    d_in: int
    d_sae: int
    source: str
    arch: str
    width: int
    content_hash: str

    def model_post_init(self, __context: Any) -> None:
        if getattr(self.sae, "hook_z_reshaping_mode", False):
            self.sae.turn_off_forward_pass_hook_z_reshaping()

    def _param(self) -> Tensor:
        return self.sae.W_dec

    def _to_sae(self, x: Tensor) -> Tensor:
        w = self._param()
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        return x.to(device=w.device, dtype=dtype)

    @staticmethod
    def _out(y: Tensor, like: Tensor) -> Tensor:
        if y.is_sparse:
            y = y.to_dense()
        return y.to(device=like.device, dtype=torch.float32)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(n, d_in) activations -> (n, d_sae) codes, float32, on x's device."""
        return self._out(self.sae.encode(self._to_sae(x)), x)

    @torch.no_grad()
    def decode(self, f: Tensor) -> Tensor:
        """(n, d_sae) codes -> (n, d_in) reconstruction, float32, on f's device."""
        return self._out(self.sae.decode(self._to_sae(f)), f)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x)) in one call (SAELens' constant_norm_rescale / layer_norm SAEs need them paired)."""
        return self._out(self.sae.decode(self.sae.encode(self._to_sae(x))), x)

    @torch.no_grad()
    def decoder(self) -> Tensor:
        """The decoder directions, (d_sae, d_in) float32 on the CPU."""
        return self._param().detach().to(device="cpu", dtype=torch.float32)


def wrap_sae(
    sae: Any, name: str, source: str, hook: str | None = None, content_hash: str | None = None,
) -> LoadedSAE:
    """A `LoadedSAE` around any `SAELike` object; sizes from its W_dec, the hook from the object unless given,
    the content hash from its weights unless given (storage passes a file hash)."""
    if not isinstance(sae, SAELike):
        missing = [m for m in ("encode", "decode", "W_dec") if not hasattr(sae, m)]
        raise SAECheckError(f"SAE {name!r} ({type(sae).__name__}) lacks {missing}: an SAE needs encode(x), decode(f) "
                            "and W_dec of shape (d_sae, d_in)")
    hook = hook or sae_hook_name(sae)
    if not hook:
        raise SAECheckError(f"SAE {name!r} ({type(sae).__name__}) has no hook name: set `hook_name` on it "
                            "(or cfg.metadata.hook_name for SAELens SAEs)")
    w = sae.W_dec
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise SAECheckError(f"SAE {name!r} has W_dec of shape {tuple(getattr(w, 'shape', ()))}: "
                            "it must be a (d_sae, d_in) tensor")
    d_sae, d_in = int(w.shape[0]), int(w.shape[1])
    return LoadedSAE(name=name, hook=hook, sae=sae, d_in=d_in, d_sae=d_sae, source=source, arch=sae_arch(sae),
                     width=d_sae, content_hash=content_hash or weights_hash(sae))


# -- checks -------------------------------------------------------------------------------------------------------
def check_sae(loaded: LoadedSAE, model: HookedTransformer) -> None:
    """Fail fast, before any compute, if the SAE cannot be scored on `model`: unknown hook, width mismatch,
    non-finite weights, or encode/decode that do not give the right shapes."""
    from sage_core.sae_zoo import ZooError, hook_d_in

    name, hook = loaded.name, loaded.hook
    if hook not in model.hook_dict:
        close = difflib.get_close_matches(hook, list(model.hook_dict), n=3, cutoff=0.5)
        raise SAECheckError(f"SAE {name!r} reads hook {hook!r}, which the model does not have; closest: "
                            f"{', '.join(close) if close else 'none'} (see model.hook_dict); "
                            "it was trained on another model, or its cfg names the hook wrongly")
    try:
        width = hook_d_in(model, hook)
    except ZooError as e:
        raise SAECheckError(f"SAE {name!r}: {e}") from None
    if loaded.d_in != width:
        raise SAECheckError(f"SAE {name!r} has d_in={loaded.d_in} but hook {hook} has width {width}: "
                            "it was trained on another model or hook")
    if loaded.d_sae != loaded.width or loaded.d_sae < 1:
        raise SAECheckError(f"SAE {name!r} has d_sae={loaded.d_sae} but width={loaded.width}: rebuild its LoadedSAE "
                            "with wrap_sae")
    for tname, t in sorted(sae_tensors(loaded.sae).items()):
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise SAECheckError(f"SAE {name!r} has NaN/inf in {tname}: the weights file is corrupt, "
                                "re-download or retrain it")
    dec = loaded.decoder()
    if tuple(dec.shape) != (loaded.d_sae, loaded.d_in):
        raise SAECheckError(f"SAE {name!r} has W_dec of shape {tuple(dec.shape)}, expected "
                            f"({loaded.d_sae}, {loaded.d_in}) = (d_sae, d_in): transpose it or fix its cfg")
    x = torch.zeros(2, loaded.d_in)
    f = _smoke(loaded, "encode", x)
    if tuple(f.shape) != (2, loaded.d_sae):
        raise SAECheckError(f"SAE {name!r} encodes a (2, {loaded.d_in}) batch to codes {tuple(f.shape)}, expected "
                            f"(2, {loaded.d_sae}): encode must return (n, d_sae)")
    y = _smoke(loaded, "decode", f)
    if tuple(y.shape) != (2, loaded.d_in):
        raise SAECheckError(f"SAE {name!r} decodes (2, {loaded.d_sae}) codes to {tuple(y.shape)}, expected "
                            f"(2, {loaded.d_in}): decode must return (n, d_in)")


def _smoke(loaded: LoadedSAE, method: str, t: Tensor) -> Tensor:
    try:
        return getattr(loaded, method)(t)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise SAECheckError(f"SAE {loaded.name!r} failed a smoke {method} of a {tuple(t.shape)} batch "
                            f"({type(e).__name__}: {msg}): check that it takes flat (n, d_in) float inputs") from None
