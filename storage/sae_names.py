"""SAE names checked without loading anything: the error every spec check raises, close matches for its hints, and
the SAELens registry's releases and sae_ids, read from the pretrained_saes.yaml that ships with sae_lens (a wrong name
fails in milliseconds, before any network access)."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from sage_core.zoo.sae import SAECheckError

REGISTRY_HINT = "`sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory()`"


class SAESpecError(SAECheckError):
    """An SAE spec names nothing that can be loaded; the message says which forms are accepted or what is missing."""


def close_matches(word: str, options: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, options, n=n, cutoff=0.4)
    return ", ".join(close) if close else "none"


def _registry() -> dict[str, Any]:
    """The full registry as sae_lens parses it (a 1.5 MB YAML: seconds; only needed once an SAE will be loaded)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


@functools.cache
def _registry_text() -> str:
    spec = importlib.util.find_spec("sae_lens")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SAESpecError("sae_lens is not installed; install sae-lens>=6 to load SAEs from its registry")
    return (Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml").read_text()


@functools.cache
def registry_releases() -> tuple[str, ...]:
    """Release names of the SAELens registry shipped with sae_lens (top-level keys of pretrained_saes.yaml),
    read without parsing the whole file, so a wrong name fails in milliseconds."""
    try:
        names = tuple(re.findall(r"^([^\s#'\"-][^:\n]*):[ \t]*$", _registry_text(), flags=re.M))
    except OSError:
        names = ()
    return names or tuple(_registry())


@functools.cache
def registry_sae_ids(release: str) -> tuple[str, ...]:
    """The sae_ids of one release, parsing only that release's block of the registry."""
    text = _registry_text()
    start = re.search(rf"^{re.escape(release)}:[ \t]*$", text, flags=re.M)
    if start is not None:
        nxt = re.search(r"^[^\s#'\"-][^:\n]*:[ \t]*$", text[start.end():], flags=re.M)
        block = text[start.start(): start.end() + nxt.start() if nxt else len(text)]
        try:
            entry = yaml.safe_load(block)[release]
            return tuple(str(s["id"]) for s in entry["saes"])
        except (yaml.YAMLError, KeyError, TypeError):
            pass
    directory = _registry()
    return tuple(directory[release].saes_map) if release in directory else ()


def split_registry(spec: str, releases: tuple[str, ...]) -> tuple[str, str] | None:
    """(release, sae_id) for `release:sae_id` or `release/sae_id`; sae_ids may hold '/', so try each split point."""
    if ":" in spec:
        release, sae_id = spec.split(":", 1)
        return release, sae_id
    parts = spec.split("/")
    for i in range(1, len(parts)):
        release = "/".join(parts[:i])
        if release in releases:
            return release, "/".join(parts[i:])
    return None


def check_registry(release: str, sae_id: str) -> None:
    releases = registry_releases()
    if release not in releases:
        raise SAESpecError(f"unknown SAELens release {release!r} (closest: {close_matches(release, list(releases))}); "
                           f"see {REGISTRY_HINT} for the list, or pass a local SAE directory")
    ids = list(registry_sae_ids(release))
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.4)
        some = close + [i for i in ids if i not in close][: max(0, 5 - len(close))]
        raise SAESpecError(f"SAELens release {release!r} has no SAE {sae_id!r}; valid ids include {some} "
                           f"({len(ids)} in all; see {REGISTRY_HINT}[{release!r}].saes_map)")
