"""What a source of SAEs (`sage_core.watch.sources`) holds now, as `FoundSAE`s: listed without loading any weights
(`hub:` reads the Hub's API and each SAE's cfg.json; the registry and YAML sources touch no network).

    registry   sae_lens' own directory, filtered by model and release patterns; spec `release/sae_id`
    dir        a local folder or an fsspec URL of SAE directories in SAELens' layout; a local SAE's spec is its
               directory, a remote one is first copied into a write-once, content-addressed snapshot
               (SAGE_HOME/watched/<content hash>) and that is its spec
    yaml       a YAML file in SAELens' registry format (local or fsspec URL); spec `hf:<repo_id>:<path>`
    hub        Hugging Face repos read through the Hub's API (`storage.hub_listing`, the one source that uses the
               network); spec `hf:<repo_id>:<folder>`, as a YAML's

Hooks and content hashes of registry and YAML SAEs come from the local Hugging Face cache where their files are there
(else the hook is the sae_id when that is a TransformerLens hook name, and the hash unknown). A watched folder is
listed by `storage.watch_folders` (what an unreadable entry gives, snapshots of remote SAEs); its public names are
re-exported here.

`write=False` (a dry run) writes nothing under SAGE_HOME: a remote SAE already snapshotted is found through its note,
any other is hashed in a temporary copy outside SAGE_HOME, and its spec names the snapshot a real run would write.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from sage_core.watch.sources import AnySource, FolderSource, FoundSAE, HubSource, Listing, RegistrySource, YamlSource
from storage.home import SageHome
from storage.sae_hub import (
    PROVENANCE_KEYS,
    HubSAE,
    cached_cfg,
    cfg_hook,
    hub_content_hash,
    registry_location,
    split_hf,
)
from storage.sae_names import (
    SAESpecError,
    SourceError,
    read_registry_yaml,
    registry_directory,
    registry_releases,
    registry_spec,
)
from storage.watch_folders import _list_folder, url_fs, watched_root, watched_snapshot

__all__ = ["LISTERS", "SourceError", "is_hook_name", "list_source", "lists", "watched_root", "watched_snapshot"]

_TL_HOOK = re.compile(
    r"hook_embed|hook_pos_embed|ln_final\.hook_(scale|normalized)"
    r"|blocks\.\d+\.(hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out|attn_in|mlp_in|q_input|k_input|v_input)"
    r"|attn\.hook_(q|k|v|z|result|pattern|attn_scores|rot_q|rot_k)|mlp\.hook_(pre|post|pre_linear)"
    r"|ln[12]\.hook_(scale|normalized))")


# -- the one entry point --------------------------------------------------------------------------------------------
def list_source(source: AnySource, home: SageHome, write: bool = True) -> Listing:
    """Every SAE `source` holds now; a SourceError (one line) when the source itself cannot be read. `write=False`:
    nothing is written under SAGE_HOME (a dry run)."""
    lister = LISTERS.get(type(source))
    if lister is None:
        raise TypeError(f"no lister registered for {type(source).__name__} (storage.watch_sources.lists)")
    return lister(source, home, write)


# how each source kind is listed (`sage_core.watch.sources` registers how it is parsed): source class -> fn(source,
# home, write)
LISTERS: dict[type, Callable[[Any, SageHome, bool], Listing]] = {}


def lists(kind: type) -> Callable:
    """Decorator: `fn(source, home, write)` lists a source of class `kind`."""
    def register(fn: Callable[[Any, SageHome, bool], Listing]) -> Callable[[Any, SageHome, bool], Listing]:
        LISTERS[kind] = fn
        return fn

    return register


@lists(RegistrySource)
def _registry_lister(source: RegistrySource, _home: SageHome, _write: bool) -> Listing:
    return _list_registry(source)


@lists(FolderSource)
def _folder_lister(source: FolderSource, home: SageHome, write: bool) -> Listing:
    return _list_folder(source, home, write)


@lists(YamlSource)
def _yaml_lister(source: YamlSource, _home: SageHome, _write: bool) -> Listing:
    return _list_yaml(source)


@lists(HubSource)
def _hub_lister(source: HubSource, _home: SageHome, _write: bool) -> Listing:
    from storage.hub_listing import list_hub

    return list_hub(source)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_hook_name(name: str) -> bool:
    """`name` is a TransformerLens hook name (blocks.8.hook_resid_pre, blocks.0.attn.hook_z, ...)."""
    return _TL_HOOK.fullmatch(name) is not None


def _hub_found(label: str, release: str, sae_id: str, spec: str, model: str, where: HubSAE) -> FoundSAE:
    cfg = cached_cfg(where.repo_id, where.folder)
    hook = (cfg_hook(cfg) if cfg else "") or (sae_id if is_hook_name(sae_id) else "")
    return FoundSAE(source=label, release=release, sae_id=sae_id, spec=spec, model=model, hook=hook,
                    content_hash=hub_content_hash(where))


# -- the SAELens registry -------------------------------------------------------------------------------------------
def _list_registry(src: RegistrySource) -> Listing:
    releases = registry_releases()
    found, unreadable = [], []
    for release, info in registry_directory().items():
        if not (_matches(info.model, src.models) and _matches(release, src.releases)):
            continue
        for sae_id in info.saes_map:
            try:
                spec = registry_spec(release, sae_id, releases)
            except SAESpecError as e:  # a name no spec reads back (none in the shipped registry)
                unreadable.append((f"{release}/{sae_id}", str(e)))
                continue
            found.append(_hub_found(src.label, release, sae_id, spec, info.model, registry_location(release, sae_id)))
    return Listing(found=found, unreadable=unreadable)


# -- a registry-format YAML -----------------------------------------------------------------------------------------
def _list_yaml(src: YamlSource) -> Listing:
    fs, path = url_fs(src.url, "YAML source")
    try:
        text = fs.cat_file(path)
    except FileNotFoundError:
        raise SourceError(f"YAML source {src.url} does not exist; fix the path or URL after yaml:") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"YAML source {src.url} could not be read ({type(e).__name__}: {e})") from e
    found, unreadable = [], []
    for release, r in read_registry_yaml(text, f"YAML source {src.url}").items():
        if not (_matches(r.model, src.models) and _matches(release, src.releases)):
            continue
        overrides = sorted(k for k in (r.config_overrides or {}) if k not in PROVENANCE_KEYS)
        if r.conversion_func not in (None, "sae_lens") or overrides:
            why = (f"conversion_func {r.conversion_func!r}" if r.conversion_func not in (None, "sae_lens")
                   else f"config_overrides {overrides}")
            unreadable.append((f"{src.url}#{release}", f"{why}: only releases sae_lens loads as they are (cfg.json + "
                                                       "sae_weights.safetensors, no overrides) are watched from a YAML"))
            continue
        for sae_id, path in r.saes.items():
            try:
                repo_id, folder = split_hf(f"{r.repo_id}:{path}")
            except SAESpecError as e:
                raise SourceError(f"YAML source {src.url}: release {release!r}, SAE {sae_id!r}: {e}") from e
            found.append(_hub_found(src.label, release, sae_id, f"hf:{repo_id}:{folder}", r.model,
                                    HubSAE(repo_id, folder, {})))
    return Listing(found=found, unreadable=unreadable)


