"""SAE names checked without loading anything: the error every spec check raises, close matches for its hints, the
SAELens registry's releases and sae_ids, read through sae_lens' own directory API (`get_pretrained_saes_directory()`,
parsed once per process and cached by sae_lens), so a wrong name fails before any network access; and the releases
of a YAML file in that registry's format (`read_registry_yaml`)."""

from __future__ import annotations

import difflib
from typing import Any, NamedTuple

import yaml

from sage_core.zoo.sae import SAECheckError

REGISTRY_HINT = "`sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory()`"
YAML_SCHEMA = "{release: {repo_id, model, saes: [{id, path}, ...]}}, the format of sae_lens' pretrained_saes.yaml"


class SAESpecError(SAECheckError):
    """An SAE spec names nothing that can be loaded; the message says which forms are accepted or what is missing."""


class SourceError(ValueError):
    """A source of SAEs cannot be listed at all (a folder that does not exist, a malformed registry-format YAML); the
    message is one line saying what to do."""


class YamlRelease(NamedTuple):
    repo_id: str
    model: str
    conversion_func: str | None
    config_overrides: dict[str, Any]
    saes: dict[str, str]  # sae_id -> its folder in the repo


def close_matches(word: str, options: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, options, n=n, cutoff=0.4)
    return ", ".join(close) if close else "none"


def registry_directory() -> dict[str, Any]:
    """{release: PretrainedSAELookup(release, repo_id, model, conversion_func, saes_map {sae_id: path}, ...)}: the
    registry shipped with the installed sae_lens. The very dict sae_lens' loaders read (not a copy), so what
    `SAE.from_pretrained` accepts and what SAGE checks cannot differ."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError as e:
        raise SAESpecError(f"sae_lens cannot be imported ({e}); install sae-lens>=6 to use its registry") from e
    return get_pretrained_saes_directory()


def registry_releases() -> tuple[str, ...]:
    """Release names of the SAELens registry, in sae_lens' order."""
    return tuple(registry_directory())


def registry_sae_ids(release: str) -> tuple[str, ...]:
    """The sae_ids of one release (none for an unknown release)."""
    info = registry_directory().get(release)
    return tuple(info.saes_map) if info is not None else ()


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


def registry_spec(release: str, sae_id: str, releases: tuple[str, ...] | None = None) -> str:
    """The spec `load_sae_spec` reads back as (release, sae_id): `release/sae_id`, or `release:sae_id` where the
    '/' form would split elsewhere (an id holding ':', or a release whose name continues another's). `releases`:
    the registry's, where the caller has them already."""
    slash = f"{release}/{sae_id}"
    if split_registry(slash, releases if releases is not None else registry_releases()) == (release, sae_id):
        return slash
    if ":" not in release:
        return f"{release}:{sae_id}"
    raise SAESpecError(f"SAELens release {release!r} holds ':' and its SAE {sae_id!r} has no spec that reads back; "
                       "download it and pass its directory")


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


# -- a registry-format YAML (a lab's own releases) ---------------------------------------------------------------
def _text_field(where: str, release: str, value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # as sae_lens reads an int path
    if not isinstance(value, str) or not value.strip():
        raise SourceError(f"{where}: release {release!r} needs {what} as a non-empty string; expected {YAML_SCHEMA}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SourceError(f"{where}: release {release!r}: {what} {value!r} holds control characters; remove them")
    return value.strip()


def read_registry_yaml(text: bytes | str, where: str) -> dict[str, YamlRelease]:
    """The releases of a YAML in SAELens' registry format; a SourceError naming the release and field that is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise SourceError(f"{where} is not valid YAML ({at}{getattr(e, 'problem', None) or e}); fix the file") from e
    if not isinstance(data, dict) or not data:
        raise SourceError(f"{where} holds no releases; expected {YAML_SCHEMA}")
    out = {}
    for release, entry in data.items():
        if not isinstance(release, str) or not release.strip() or any(ord(c) < 32 for c in release):
            raise SourceError(f"{where}: release name {release!r} is not a plain string; expected {YAML_SCHEMA}")
        if not isinstance(entry, dict):
            raise SourceError(f"{where}: release {release!r} is a {type(entry).__name__}, not a mapping with repo_id, "
                              f"model and saes; expected {YAML_SCHEMA}")
        repo_id = _text_field(where, release, entry.get("repo_id"), "'repo_id'")
        model = _text_field(where, release, entry.get("model"), "'model'")
        saes = entry.get("saes")
        if not isinstance(saes, list):
            raise SourceError(f"{where}: release {release!r} needs 'saes' as a list of {{id, path}}; expected "
                              f"{YAML_SCHEMA}")
        ids: dict[str, str] = {}
        for i, sae in enumerate(saes):
            if not isinstance(sae, dict):
                raise SourceError(f"{where}: release {release!r}, saes[{i}] is not a mapping with id and path")
            sae_id = _text_field(where, release, sae.get("id"), f"saes[{i}].id")
            if sae_id in ids:
                raise SourceError(f"{where}: release {release!r} lists the SAE id {sae_id!r} twice")
            ids[sae_id] = _text_field(where, release, sae.get("path"), f"saes[{i}].path")
        func, overrides = entry.get("conversion_func"), entry.get("config_overrides")
        if overrides is not None and not isinstance(overrides, dict):
            raise SourceError(f"{where}: release {release!r} has config_overrides that are not a mapping")
        if func is not None and not isinstance(func, str):
            raise SourceError(f"{where}: release {release!r} has a conversion_func that is not a name")
        out[release] = YamlRelease(repo_id, model, func, overrides or {}, ids)
    return out
