"""Any SAE, as SAGE sees it: a small protocol (encode / decode / W_dec, like SAEBench's), a wrapper that hides
SAELens' quirks (hook_z reshaping, dtypes, sparse codes), content hashes of the weights, and the checks that run
before any compute.

Pure: nothing here reads or writes files; `storage.sae_sources` resolves a user's SAE spec into a `LoadedSAE`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import types
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
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
    """Every weight tensor of an SAE: its `state_dict()` when it has one, plus the tensors held as attributes (a
    module's plain-tensor attributes are not in its state_dict) and W_dec. A state_dict() that raises is an error, not
    a reason to hash less: two SAEs could then share a cache key."""
    out: dict[str, Tensor] = {}
    if isinstance(sae, torch.nn.Module) or callable(getattr(sae, "state_dict", None)):
        try:
            sd = sae.state_dict()
        except Exception as e:
            msg = " ".join(str(e).split())[:300]
            raise SAECheckError(f"{type(sae).__name__}.state_dict() failed ({type(e).__name__}: {msg}): SAGE hashes "
                                "the weights it returns to key every cached result; make it return the weight "
                                "tensors, or drop the method") from e
        if isinstance(sd, dict):
            out = {str(k): v for k, v in sd.items() if isinstance(v, Tensor)}
    for k, v in getattr(sae, "__dict__", {}).items():
        if isinstance(v, Tensor) and k not in out:
            out[k] = v
    if "W_dec" not in out and isinstance(getattr(sae, "W_dec", None), Tensor):  # a property or class attribute
        out["W_dec"] = sae.W_dec
    return out


def weights_hash(sae: Any) -> str:
    """sha256 over the SAE's weight tensors (name, dtype, shape and bytes), in sorted name order. An object that is
    not a torch module may keep weights where no attribute shows them (a dict, a closure), so its codes on a fixed
    probe batch are hashed too: two such SAEs that share a decoder still get different keys."""
    h = hashlib.sha256()
    for name, t in sorted(sae_tensors(sae).items()):
        _hash_tensor(h, name, t)
    w = getattr(sae, "W_dec", None)
    if not isinstance(sae, torch.nn.Module) and isinstance(w, Tensor) and w.ndim == 2:
        probe = torch.randn(4, int(w.shape[1]), generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                codes = sae.encode(probe.to(device=w.device, dtype=w.dtype if w.dtype.is_floating_point else None))
        except Exception as e:
            msg = " ".join(str(e).split())[:300]
            raise SAECheckError(f"{type(sae).__name__}.encode failed on a (4, {int(w.shape[1])}) probe batch "
                                f"({type(e).__name__}: {msg}): it must take flat (n, d_in) float inputs") from e
        if isinstance(codes, Tensor):
            _hash_tensor(h, "encode(probe)", codes.to_dense() if codes.is_sparse else codes)
    return h.hexdigest()[:HASH_LEN]


def _hash_tensor(h, name: str, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


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
        except Exception as e:  # a broken cfg is not "custom": its SAE would be grouped and labelled wrongly
            msg = " ".join(str(e).split())[:300]
            raise SAECheckError(f"the SAE's cfg.architecture() failed ({type(e).__name__}: {msg}); fix its cfg or "
                                "load it with the sae_lens version it was saved with") from e
    if not isinstance(arch, str):
        arch = getattr(sae, "arch", None)
    return arch if isinstance(arch, str) and arch else "custom"


# -- the wrapper --------------------------------------------------------------------------------------------------
class LoadedSAE(BaseModel):
    """One SAE, resolved and ready: flat float32 (n, d_in) in, (n, d_sae) codes out, whatever its origin.

    SAELens SAEs trained on `attn.hook_z` reshape (…, n_heads, d_head) inputs themselves; the wrapper turns that off
    (once, on the wrapped object), so `encode` always takes (n, n_heads * d_head) and `decode` returns it.

    Devices: `encode` / `decode` take inputs on any device, run where the SAE sits (`device`) and return on the
    input's device; `to(device)` gives a copy elsewhere. `decoder()` is always float32 on the CPU.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    hook: str
    sae: Any
    d_in: int
    d_sae: int
    source: str
    arch: str
    width: int  # d_sae as the SAE declares it (cfg.d_sae or a d_sae attribute); check_sae compares it with W_dec
    content_hash: str

    def model_post_init(self, __context: Any) -> None:
        if getattr(self.sae, "hook_z_reshaping_mode", False):
            self.sae.turn_off_forward_pass_hook_z_reshaping()

    def _param(self) -> Tensor:
        return self.sae.W_dec

    @property
    def device(self) -> torch.device:
        """Where the SAE computes (its W_dec's device)."""
        return self._param().device

    def to(self, device: str | torch.device) -> LoadedSAE:
        """A copy of this SAE on `device` (this one is left as it is: other threads may be using it); the same
        instance when it is there already. A torch module (or an object with a `to` method) is deep-copied and moved;
        any other SAE stays where it is, and encode / decode still take inputs from `device` (they move them)."""
        device = torch.device(device)
        movable = isinstance(self.sae, torch.nn.Module) or callable(getattr(self.sae, "to", None))
        if self.device == device or not movable:
            return self
        twin = copy.deepcopy(self.sae)
        _rebind_closures(twin, self.sae)
        moved = twin.to(device)
        moved = twin if moved is None else moved  # a `to` that moves in place and returns nothing
        out = self.model_copy(update={"sae": moved})
        out.model_post_init(None)  # the copy's hook_z reshaping off, as on the original
        return out

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


def _rebind_closures(twin: Any, original: Any) -> None:
    """Point functions kept on the copy that close over the original (SAELens' run-time normalisation stores closures
    over `self` as attributes; a deep copy shares functions, not copies them) at the copy, so the two never write
    each other's state."""
    for name, f in list(vars(twin).items()):
        if not isinstance(f, types.FunctionType) or not f.__closure__:
            continue
        cells = []
        for c in f.__closure__:
            try:
                cells.append(types.CellType(twin if c.cell_contents is original else c.cell_contents))
            except ValueError:  # an empty cell (a name not yet bound): keep it as it is
                cells.append(c)
        g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, tuple(cells))
        g.__kwdefaults__, g.__qualname__ = f.__kwdefaults__, f.__qualname__
        setattr(twin, name, g)


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
                     width=declared_width(sae, d_sae), content_hash=content_hash or weights_hash(sae))


def declared_width(sae: Any, default: int) -> int:
    """The d_sae an SAE says it has: `cfg.d_sae` (SAELens), else a `d_sae` attribute, else `default`."""
    for obj in (getattr(sae, "cfg", None), sae):
        d = getattr(obj, "d_sae", None) if obj is not None else None
        if isinstance(d, int) and not isinstance(d, bool):
            return d
    return default


# -- checks -------------------------------------------------------------------------------------------------------
def check_sae(loaded: LoadedSAE, model: HookedTransformer) -> None:
    """Fail fast, before any compute, if the SAE cannot be scored on `model`: unknown hook, width mismatch,
    non-finite weights, or encode/decode that do not give the right shapes."""
    from sage_core.zoo.train import ZooError, hook_d_in

    name, hook = loaded.name, loaded.hook
    if hook not in model.hook_dict:
        close = difflib.get_close_matches(hook, list(model.hook_dict), n=3, cutoff=0.5)
        raise SAECheckError(f"SAE {name!r} reads hook {hook!r}, which the model does not have; closest: "
                            f"{', '.join(close) if close else 'none'} (see model.hook_dict); "
                            "it was trained on another model, or its cfg names the hook wrongly")
    try:
        width = hook_d_in(model, hook)
    except ZooError as e:
        raise SAECheckError(f"SAE {name!r}: {e}") from e
    if loaded.d_in != width:
        raise SAECheckError(f"SAE {name!r} has d_in={loaded.d_in} but hook {hook} has width {width}: "
                            "it was trained on another model or hook")
    if loaded.d_sae < 1:
        raise SAECheckError(f"SAE {name!r} has an empty W_dec (0 rows): it has no features to score")
    if loaded.width != loaded.d_sae:
        raise SAECheckError(f"SAE {name!r} declares d_sae={loaded.width} but its W_dec has {loaded.d_sae} rows: its "
                            "cfg and weights disagree; fix cfg.d_sae or the weights")
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
                            f"({type(e).__name__}: {msg}): check that it takes flat (n, d_in) float inputs") from e
