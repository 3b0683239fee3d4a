"""A `hub:` source (`sage_core.watch.sources.HubSource`) listed through the Hugging Face Hub's API
(`huggingface_hub.HfApi`): the repos an author owns or a library tag marks (`list_models`), each repo's files at its
current commit (`list_repo_tree`), and in each folder holding `cfg.json` + `sae_weights.safetensors` (SAELens' layout,
at any depth) one SAE, spec `hf:<repo_id>:<folder>`: the form a registry-format YAML's SAEs get, loaded by
`SAE.from_pretrained(repo_id, folder)`.

Only each SAE's cfg.json is downloaded (`hf_hub_download` at the listed commit, into the local Hugging Face cache: the
next listing of an unchanged repo reads it from there). The content hash is `sae_hub.sae_files_hash`'s, made from the
cfg.json and the weights' sha256 that the Hub reports for LFS files (weights outside LFS are small: they are
downloaded), so it equals the hash of the same files in a folder, the zoo or the cache, and new weights read as new
the night they are pushed, without downloading them.

The endpoint is HF_ENDPOINT (read at each listing, like `sae_hub`'s loading), else huggingface_hub's. A hub that
cannot be reached (HF_HUB_OFFLINE included) is one SourceError; a repo or folder that cannot be read is reported in
`Listing.unreadable`, and the listing goes on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
from pathlib import Path
from typing import Any

from sage_core.watch.sources import FoundSAE, HubSource, Listing
from storage.hashing import HASH_LEN, json_content_hash, safetensors_content_hash
from storage.sae_hub import (
    MAX_CFG_BYTES,
    SAE_CFG,
    SAE_WEIGHTS,
    _hub_unreachable,
    cfg_field,
    cfg_hook,
    read_cfg,
    split_hf,
)
from storage.sae_names import SAESpecError, SourceError

# the Hub keeps files over 10 MB in LFS (with their sha256); a bigger one outside it is not downloaded to be hashed
MAX_PLAIN_WEIGHTS_BYTES = 64 << 20


class _Unreadable(Exception):
    """A repo or folder that looks like it holds an SAE but cannot be listed; the message is the reason."""


def hub_endpoint() -> str:
    """The Hub's URL: HF_ENDPOINT as it is now (huggingface_hub reads it once, at import), else huggingface_hub's."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _brief(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _repo_matches(repo_id: str, patterns: tuple[str, ...]) -> bool:
    name = repo_id.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(repo_id if "/" in p else name, p) for p in patterns)


def files_hash(cfg_sha256: str, weights_sha256: str) -> str:
    """`sae_hub.sae_files_hash` of an SAE directory from its two files' content hashes (hex, whole or cut to
    `hashing.file_hash`'s length: the cfg's `json_content_hash`, the weights' sha256, which is their content hash
    where safetensors wrote them without metadata), without the files."""
    h = hashlib.sha256()
    for name, digest in ((SAE_CFG, cfg_sha256), (SAE_WEIGHTS, weights_sha256)):
        h.update(name.encode())
        h.update(digest[:HASH_LEN].encode())
    return h.hexdigest()[:HASH_LEN]


def list_hub(src: HubSource) -> Listing:
    """Every SAE folder of the repos `src` selects, as the Hub has them now; a SourceError (one line) when the Hub
    cannot be reached or refuses the query."""
    from huggingface_hub import HfApi, constants

    endpoint = hub_endpoint()
    if constants.is_offline_mode():  # the user's own switch, which huggingface_hub checks before every request
        raise SourceError(f"{src.label}: HF_HUB_OFFLINE is set, so the Hugging Face hub was not asked; this source "
                          "reads the hub itself: unset HF_HUB_OFFLINE where the hub (or a mirror named by "
                          "HF_ENDPOINT) is reachable")
    why = _hub_unreachable()  # a fast probe: huggingface_hub itself retries a dead host for about half a minute
    if why is not None:
        raise SourceError(f"{src.label}: the Hugging Face hub at {endpoint} cannot be reached ({why}); this source "
                          "reads the hub itself: check the network, or set HF_ENDPOINT to a reachable mirror")
    api = HfApi(endpoint=endpoint)
    try:
        repos = [(m.id, m.sha) for m in api.list_models(author=src.author, filter=src.library, expand=["sha"])]
    except Exception as e:  # huggingface_hub's HTTP errors, httpx's, a JSON it cannot read: the query failed
        raise SourceError(f"{src.label}: the hub at {endpoint} did not list its repos ({_brief(e)}); check the "
                          "author and library names, or retry") from e
    found, unreadable = [], []
    for repo_id, sha in sorted(repos):
        if not _repo_matches(repo_id, src.repos):
            continue
        try:
            folders = _sae_folders(api, repo_id, sha)
        except _Unreadable as e:
            unreadable.append((repo_id, str(e)))
            continue
        for folder, (cfg_entry, weights_entry) in folders.items():
            where = f"{repo_id}/{folder}" if folder else repo_id
            try:
                f = _hub_sae(src.label, endpoint, repo_id, sha, folder, cfg_entry, weights_entry)
            except _Unreadable as e:
                unreadable.append((where, str(e)))
                continue
            if _matches(f.model, src.models):
                found.append(f)
    return Listing(found=found, unreadable=unreadable)


def _sae_folders(api, repo_id: str, sha: str | None) -> dict[str, tuple[Any, Any]]:
    """{folder: (its cfg.json entry, its weights entry)} of every folder holding either file ('' is the repo's
    root), in path order; an entry is None where the file is missing."""
    from huggingface_hub.hf_api import RepoFile

    try:
        tree = [e for e in api.list_repo_tree(repo_id, recursive=True, revision=sha) if isinstance(e, RepoFile)]
    except Exception as e:  # gated, private, removed since it was listed, a page the hub could not serve
        raise _Unreadable(f"its files could not be listed ({_brief(e)})") from e
    folders: dict[str, list[Any]] = {}
    for entry in tree:
        folder, name = posixpath.split(entry.path)
        if name in (SAE_CFG, SAE_WEIGHTS):
            folders.setdefault(folder, [None, None])[name == SAE_WEIGHTS] = entry
    return {k: (v[0], v[1]) for k, v in sorted(folders.items())}


def _hostile(folder: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in folder):
        return "its path holds control characters"
    if folder != folder.strip() or any(p != p.strip() for p in folder.split("/")):
        return "its path begins or ends with whitespace (an SAE spec strips it)"
    return None


def _download(endpoint: str, repo_id: str, sha: str | None, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:  # at a commit already in the cache, huggingface_hub answers from there without a request
        return Path(hf_hub_download(repo_id, filename, revision=sha, endpoint=endpoint))
    except Exception as e:  # an HTTP error, a dropped connection, a full disk: this SAE is not read this time
        raise _Unreadable(f"{filename} could not be downloaded ({_brief(e)})") from e


def _hub_sae(label: str, endpoint: str, repo_id: str, sha: str | None, folder: str, cfg_entry, weights_entry
             ) -> FoundSAE:
    if cfg_entry is None or weights_entry is None:
        missing = SAE_CFG if cfg_entry is None else SAE_WEIGHTS
        raise _Unreadable(f"missing {missing}; an SAE folder holds {SAE_CFG} and {SAE_WEIGHTS}")
    if not folder:
        raise _Unreadable("an SAE at the repo's root: sae_lens loads a repo's SAEs from folders "
                          f"(hf:{repo_id}:<folder>); move it into one")
    why = _hostile(folder)
    if why:
        raise _Unreadable(why)
    try:
        split_hf(f"{repo_id}:{folder}")  # the spec must read back as this repo and folder
    except SAESpecError as e:
        raise _Unreadable(str(e)) from e
    if (cfg_entry.size or 0) > MAX_CFG_BYTES:
        raise _Unreadable(f"cfg.json is {cfg_entry.size} bytes, not an SAE config (a few KB)")
    cfg_path = _download(endpoint, repo_id, sha, f"{folder}/{SAE_CFG}")
    try:
        cfg_bytes = cfg_path.read_bytes()
        cfg = read_cfg(cfg_bytes)
    except (OSError, ValueError) as e:
        raise _Unreadable(str(e)) from e
    model, hook = cfg_field(cfg, "model_name"), cfg_hook(cfg)
    if not model:
        raise _Unreadable("cfg.json names no model (metadata.model_name); add it")
    if _hostile(model) or _hostile(hook):
        raise _Unreadable("cfg.json's model or hook name holds control characters")
    lfs = weights_entry.lfs
    if lfs is not None and lfs.sha256:
        weights_sha = lfs.sha256
    elif (weights_entry.size or 0) <= MAX_PLAIN_WEIGHTS_BYTES:
        weights_sha = safetensors_content_hash(_download(endpoint, repo_id, sha, f"{folder}/{SAE_WEIGHTS}"))
    else:
        raise _Unreadable(f"{SAE_WEIGHTS} is {weights_entry.size} bytes outside LFS: the hub gives no sha256 of it")
    return FoundSAE(source=label, release=repo_id, sae_id=folder, spec=f"hf:{repo_id}:{folder}", model=model,
                    hook=hook, content_hash=files_hash(json_content_hash(cfg_bytes), weights_sha))
