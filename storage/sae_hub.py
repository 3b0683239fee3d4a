"""SAEs in SAELens' file layout (`<folder>/{cfg.json, sae_weights.safetensors}`) on the Hugging Face hub: the content
hash of those files, their copy in the local Hugging Face cache (looked up offline, never downloaded here), and loading
through `SAE.from_pretrained`, either a registry `release/sae_id` or a repo and folder that no shipped registry names
(`hf:<repo_id>:<folder>`, a lab's own release; sae_lens treats a release it does not know as a repo id).

A hub that cannot be reached gives one line, fast, instead of a minute of retries: the load then reads the local
cache only (`_from_pretrained`: per call where SAELens lets it, else huggingface_hub's offline mode for the call).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

from sage_core.zoo.sae import LoadedSAE, wrap_sae
from storage.hashing import HASH_LEN, content_file_hash, stable_hash
from storage.sae_names import SAESpecError, check_registry, registry_directory

SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
HF_FORM = "hf:<repo_id>:<folder>"
HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_SET = "HF_HUB_OFFLINE is set"  # why the hub is not asked, where the user switched it off
MAX_CFG_BYTES = 1 << 20  # an SAE's cfg.json is a few KB; a bigger one is not read


# -- the files' content hash ---------------------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}


def sae_files_hash(path: str | Path) -> str:
    """Hash of an SAE directory's files, the weights and the cfg (normalisation, hook and reshaping live there), each
    by its canonical content (`storage.hashing.content_file_hash`: the cfg's keys in any order): the same files give
    the same hash in a folder, the zoo or the Hugging Face cache. Remembered per process while both
    files keep their stat signature (a watch lists the same cached SAEs every run)."""
    path = Path(path)
    stats = [(path / f).stat() for f in (SAE_CFG, SAE_WEIGHTS)]
    key = (str(path.resolve()), *((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats))
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in (SAE_CFG, SAE_WEIGHTS):
            h.update(f.encode())
            h.update(content_file_hash(path / f).encode())
        _HASHES[key] = h.hexdigest()[:HASH_LEN]
    return _HASHES[key]


def read_cfg(text: bytes | str) -> dict[str, Any]:
    """A cfg.json's content as a dict; ValueError (one line) when it is not a JSON object."""
    if len(text) > MAX_CFG_BYTES:
        raise ValueError(f"cfg.json is {len(text)} bytes, not an SAE config (a few KB)")
    try:
        cfg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"cfg.json is not JSON ({' '.join(str(e).split())[:120]})") from e
    except RecursionError as e:  # '[' * 50000 fits in MAX_CFG_BYTES and overflows the parser: one line, not a crash
        raise ValueError("cfg.json is nested too deeply to be an SAE config (JSON deeper than the parser goes)") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"cfg.json holds a JSON {type(cfg).__name__}, not an object")
    return cfg


def cfg_field(cfg: dict[str, Any], *names: str) -> str:
    """The first of `metadata.<name>` (SAELens 6), then the top-level `<name>` (older SAELens), for each name in
    turn, that is a non-empty string; '' when none is."""
    meta = cfg.get("metadata")
    for name in names:
        for v in (meta.get(name) if isinstance(meta, dict) else None, cfg.get(name)):
            if isinstance(v, str) and v.strip():
                return v.strip()
    return ""


def cfg_hook(cfg: dict[str, Any]) -> str:
    """The hook an SAE's cfg.json names (`hook_point` before SAELens 6)."""
    return cfg_field(cfg, "hook_name", "hook_point")


# -- the local Hugging Face cache ----------------------------------------------------------------------------------
def _cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        p = try_to_load_from_cache(repo_id, filename)  # reads the cache directory only: no network
    except ValueError:  # a repo id or file name the hub would refuse
        return None
    return Path(p) if isinstance(p, str) else None


def cached_sae_dir(repo_id: str, folder: str) -> Path | None:
    """The local cache's snapshot folder holding both of the SAE's files (at the revision `main` points to), else
    None. SAELens names them `<folder>/cfg.json` and `<folder>/sae_weights.safetensors`."""
    cfg, weights = (_cached(repo_id, f"{folder}/{f}") for f in (SAE_CFG, SAE_WEIGHTS))
    if cfg is None or weights is None or cfg.parent != weights.parent:
        return None
    return cfg.parent


def cached_cfg(repo_id: str, folder: str) -> dict[str, Any] | None:
    """The SAE's cfg.json from the local cache; None when it is not cached or not a JSON object."""
    p = _cached(repo_id, f"{folder}/{SAE_CFG}")
    try:
        return read_cfg(p.read_bytes()) if p is not None else None
    except (OSError, ValueError):
        return None


def cached_files_hash(repo_id: str, folder: str) -> str | None:
    d = cached_sae_dir(repo_id, folder)
    try:
        return sae_files_hash(d) if d is not None else None
    except OSError:  # a blob removed under us
        return None


class HubSAE(NamedTuple):
    """Where an SAE's files are on the hub, and what sae_lens applies to them on loading beyond the files (`applied`:
    {} for nothing; None when it reads other files, through a conversion function)."""

    repo_id: str
    folder: str
    applied: dict[str, Any] | None


# config_overrides that say where an SAE came from or how its model was run, not what the SAE computes
PROVENANCE_KEYS = frozenset({"dataset_path", "dataset_trust_remote_code", "model_from_pretrained_kwargs",
                              "neuronpedia_id", "model_name", "context_size", "prepend_bos"})


def registry_location(release: str, sae_id: str) -> HubSAE:
    info = registry_directory()[release]
    if info.conversion_func not in (None, "sae_lens"):
        return HubSAE(info.repo_id, info.saes_map[sae_id], None)
    applied = {k: v for k, v in (info.config_overrides or {}).items() if k not in PROVENANCE_KEYS}
    if sae_id in (info.norm_scaling_factor or {}):
        applied["norm_scaling_factor"] = info.norm_scaling_factor[sae_id]
    return HubSAE(info.repo_id, info.saes_map[sae_id], applied)


def hub_content_hash(where: HubSAE) -> str | None:
    """The content hash of a hub SAE whose files are in the local cache: their `sae_files_hash` (what the same files
    give in a folder or the zoo), combined with what sae_lens applies on loading where it applies something; None when
    the files are not cached or sae_lens converts other files."""
    h = cached_files_hash(where.repo_id, where.folder) if where.applied is not None else None
    return stable_hash(h, where.applied) if h is not None and where.applied else h


# -- hf:<repo_id>:<folder> -----------------------------------------------------------------------------------------
def split_hf(rest: str) -> tuple[str, str]:
    """(repo_id, folder) of `hf:<rest>`; a one-line SAESpecError unless the repo id is one the hub accepts
    (`<org>/<name>`) and the folder is named. Needs no network."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, sep, folder = rest.partition(":")
    folder = folder.strip("/")
    if not sep or not folder:
        raise SAESpecError(f"'hf:{rest}' is not of the form {HF_FORM} (e.g. hf:my-lab/my-saes:layer_3)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise SAESpecError(f"hf:{rest}: {repo_id!r} is not a Hugging Face repo id ({' '.join(str(e).split())[:160]})"
                           ) from e
    if "/" not in repo_id:  # sae_lens reads a name without '/' as a registry release, not a repo
        raise SAESpecError(f"hf:{rest}: write the repo id as <org>/<name> (sae_lens reads {repo_id!r} as a "
                           "registry release)")
    if ".." in folder.split("/"):
        raise SAESpecError(f"hf:{rest}: the folder may not contain '..'")
    return repo_id, folder


# -- loading -------------------------------------------------------------------------------------------------------
def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub's front page answers 2xx/3xx within `timeout` seconds (DNS included), else why not (it goes
    into the error message: a DNS failure, a proxy's refusal and a 404 from a sandbox that intercepts every connection
    need different fixes)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return OFFLINE_SET
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    if urlparse(endpoint).scheme not in ("http", "https"):
        return f"HF_ENDPOINT {endpoint!r} is not an http(s) URL"
    result: list[str | None] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(endpoint + "/", method="HEAD", headers={"User-Agent": "sage-eval"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                result.append(None if 200 <= r.status < 400 else f"HTTP {r.status} from {endpoint}")
        # every failure means "unreachable" (URLError and socket errors are OSErrors); its text says which
        except (OSError, ValueError, http.client.HTTPException) as e:
            result.append(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"no answer from {endpoint} within {timeout:g} s"


def _cached_sae_lens_loader(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                            cfg_overrides: dict[str, Any] | None = None):
    """sae_lens' own loader (`sae_lens_huggingface_loader`) on the local cache only: each file through
    `hf_hub_download(local_files_only=True)`, so no request is made and no process-wide switch is flipped. The
    sparsity file is not read: `SAE.from_pretrained` drops it."""
    from huggingface_hub import hf_hub_download
    from sae_lens.loading import pretrained_sae_loaders as loaders

    del force_download  # a cache-only read downloads nothing
    cfg_path = hf_hub_download(repo_id, f"{folder_name}/{SAE_CFG}", local_files_only=True)
    weights_path = hf_hub_download(repo_id, f"{folder_name}/{SAE_WEIGHTS}", local_files_only=True)
    cfg = loaders.get_sae_lens_config_from_disk(Path(cfg_path).parent, device, cfg_overrides)
    cfg, state = loaders.read_sae_components_from_disk(cfg_dict=cfg, weight_path=weights_path, device=device)
    return cfg, state, None


_OFFLINE_LOCK = threading.Lock()


def _from_pretrained(release: str, sae_id: str, online: bool):
    """SAE.from_pretrained; offline it reads the local cache only, without retries. SAE.from_pretrained takes no
    `local_files_only`: an SAE in SAELens' own layout (every `hf:` spec, a release without a conversion function)
    goes through `_cached_sae_lens_loader` as its converter, per call; a release SAELens converts from other files
    runs a loader that calls `hf_hub_download` itself, reachable only through huggingface_hub's process-wide offline
    switch, set here for the call (tests/unit/storage/test_sae_hub_offline.py checks what both rely on)."""
    from huggingface_hub import constants
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name

    if online:
        return SAE.from_pretrained(release, sae_id, device="cpu")
    if get_conversion_loader_name(release) == "sae_lens":
        return SAE.from_pretrained(release, sae_id, device="cpu", converter=_cached_sae_lens_loader)
    with _OFFLINE_LOCK:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            return SAE.from_pretrained(release, sae_id, device="cpu")
        finally:
            constants.HF_HUB_OFFLINE = before


def _load_hub(label: str, release: str, sae_id: str, where: HubSAE, source: str) -> LoadedSAE:
    unreachable = _hub_unreachable()
    try:
        got = _from_pretrained(release, sae_id, online=unreachable is None)
    except Exception as e:
        from huggingface_hub import constants

        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        msg = " ".join(str(e).split())[:300]
        if unreachable == OFFLINE_SET:  # the user's own switch (usual on an offline cluster): not a network fault
            raise SAESpecError(f"SAELens SAE {label} could not be read from the local Hugging Face cache "
                               f"({type(e).__name__}: {msg}) and {OFFLINE_SET}, so the hub was not asked; unset it "
                               "where the hub is reachable, or download the SAE there and pass its directory "
                               "(sae.save_model(dir))") from e
        if unreachable is not None:
            raise SAESpecError(f"SAELens SAE {label} could not be read from the local Hugging Face cache "
                               f"({type(e).__name__}: {msg}) and the hub ({endpoint}) is unreachable ({unreachable}); "
                               "download it where the hub is reachable and pass its directory (sae.save_model(dir)), "
                               "or set HF_ENDPOINT to a reachable mirror") from e
        raise SAESpecError(f"SAELens could not load {label} from the hub ({type(e).__name__}: {msg}); "
                           "retry, or download it and pass its directory instead") from e
    sae = got[0] if isinstance(got, tuple) else got  # sae_lens>=6 returns the SAE; <=5 returned (sae, cfg, sparsity)
    # the files just loaded are in the cache now: their hash is the one a source lists for them
    return wrap_sae(sae, name=label, source=source, content_hash=hub_content_hash(where))


def load_registry(release: str, sae_id: str) -> LoadedSAE:
    check_registry(release, sae_id)
    return _load_hub(f"{release}/{sae_id}", release, sae_id, registry_location(release, sae_id), "registry")


def load_hf(rest: str) -> LoadedSAE:
    """`hf:<repo_id>:<folder>`: sae_lens' default loader on `<folder>/cfg.json` and its weights in that repo."""
    repo_id, folder = split_hf(rest)
    return _load_hub(f"{repo_id}/{folder}", repo_id, folder, HubSAE(repo_id, folder, {}), "hub")
