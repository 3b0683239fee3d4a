"""Where newly published SAEs are looked for, each a typed config, and what a source finds (`FoundSAE`).

    registry:<model>[:<release>]   the SAELens registry shipped with sae_lens (fnmatch patterns, ',' between several)
    dir:<path or fsspec URL>       a watched folder of SAE directories in SAELens' layout (cfg.json + weights)
    yaml:<path or fsspec URL>      a YAML file in the SAELens registry format, for a lab's own releases
    hub:<key>=<value>[,...]        Hugging Face repos of SAEs in SAELens' layout, listed through the Hub's API:
                                   author=<user or org> and/or library=<tag> (e.g. library=saelens: the repos tagged
                                   `library_name: saelens`), then optionally repo=<pattern> (on the repo id, or on
                                   its name after '/' when the pattern holds no '/') and model=<pattern> (on the
                                   model cfg.json names), each repeatable; e.g. hub:author=jbloom,repo=*GPT2*

`parse_source` reads that text form (the CLI's --source and a deployment's parameters); listing a source is storage's
(`storage.watch_sources.list_source`, which returns a `Listing`), deciding what is new is `sage_core.watch.plan`'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

SOURCE_FORMS = ("registry:<model>[:<release>], dir:<path or URL>, yaml:<path or URL>, hub:author=<name>|library=<tag>"
                "[,repo=<pattern>][,model=<pattern>] (patterns may use * and ?)")
HUB_KEYS = ("author", "library", "repo", "model")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # what the Hub accepts as a user, org or tag name


def _patterns(value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    if not parts:
        raise ValueError("an empty pattern list")
    return parts


class _Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegistrySource(_Source):
    """SAEs of the SAELens registry (`get_pretrained_saes_directory()`) whose model and release match."""

    kind: Literal["registry"] = "registry"
    models: tuple[str, ...] = Field(min_length=1, description="fnmatch patterns on the registry's `model` field")
    releases: tuple[str, ...] = Field(("*",), min_length=1, description="fnmatch patterns on release names")

    @property
    def label(self) -> str:
        return f"registry:{','.join(self.models)}:{','.join(self.releases)}"


class FolderSource(_Source):
    """Every SAE directory (cfg.json + sae_weights.safetensors) directly inside a folder, or the folder itself."""

    kind: Literal["dir"] = "dir"
    url: str = Field(min_length=1, description="a local path or an fsspec URL (file://, memory://, s3://, ...)")

    @field_validator("url")
    @classmethod
    def _no_control_chars(cls, v: str) -> str:
        if any(ord(c) < 32 for c in v):
            raise ValueError("a folder path or URL may not hold control characters")
        return v

    @property
    def label(self) -> str:
        return f"dir:{self.url}"


class YamlSource(_Source):
    """The releases of a YAML file in the SAELens registry format ({release: {repo_id, model, saes: [{id, path}]}})."""

    kind: Literal["yaml"] = "yaml"
    url: str = Field(min_length=1, description="a local path or an fsspec URL")
    models: tuple[str, ...] = Field(("*",), min_length=1)
    releases: tuple[str, ...] = Field(("*",), min_length=1)

    @property
    def label(self) -> str:
        return f"yaml:{self.url}"


class HubSource(_Source):
    """The SAE folders (cfg.json + sae_weights.safetensors, at any depth) of the Hugging Face repos an author owns
    and/or a library tag marks, whose repo id and model match; read from the Hub's API at each listing, so a repo
    published today is found by tonight's watch."""

    kind: Literal["hub"] = "hub"
    author: str | None = Field(None, description="a Hub user or organisation: its repos")
    library: str | None = Field(None, description="a tag the repos carry (library_name: saelens gives 'saelens')")
    repos: tuple[str, ...] = Field(("*",), min_length=1, description="fnmatch patterns on repo ids ('<author>/"
                                                                      "<name>'; without '/', on the name)")
    models: tuple[str, ...] = Field(("*",), min_length=1, description="fnmatch patterns on cfg.json's model name")

    @field_validator("author", "library")
    @classmethod
    def _hub_name(cls, v: str | None) -> str | None:
        if v is not None and not _HUB_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a Hub user, organisation or tag name (letters, digits, '.', '_', '-')")
        return v

    @field_validator("repos", "models")
    @classmethod
    def _printable(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p or any(ord(c) < 32 for c in p) for p in v):
            raise ValueError("a pattern may be neither empty nor hold control characters")
        return v

    @model_validator(mode="after")
    def _narrowed(self) -> HubSource:
        if self.author is None and self.library is None:  # every repo of the Hub would be listed
            raise ValueError("a hub source needs author=<name> or library=<tag> (e.g. hub:library=saelens)")
        return self

    @property
    def label(self) -> str:
        parts = [f"author={self.author}"] if self.author else []
        parts += [f"library={self.library}"] if self.library else []
        parts += [f"repo={p}" for p in self.repos if self.repos != ("*",)]
        parts += [f"model={p}" for p in self.models if self.models != ("*",)]
        return "hub:" + ",".join(parts)


# the source kinds: `<kind>:<rest>` -> the parser of `rest`; each kind registers its own (`source_kind`), and
# `storage.watch_sources` registers how to list it
PARSERS: dict[str, Callable[[str], _Source]] = {}


def source_kind(kind: str) -> Callable:
    """Decorator: `fn(rest)` parses a `<kind>:<rest>` source text into its typed source."""
    def register(fn: Callable[[str], _Source]) -> Callable[[str], _Source]:
        if kind in PARSERS:
            raise ValueError(f"source kind {kind!r} registered twice")
        PARSERS[kind] = fn
        return fn

    return register


@source_kind("registry")
def _registry(rest: str) -> RegistrySource:
    models, _, releases = rest.partition(":")
    return RegistrySource(models=_patterns(models), releases=_patterns(releases) if releases else ("*",))


@source_kind("dir")
def _folder(rest: str) -> FolderSource:
    return FolderSource(url=rest.strip())


@source_kind("yaml")
def _yaml(rest: str) -> YamlSource:
    return YamlSource(url=rest.strip())


@source_kind("hub")
def _hub(rest: str) -> HubSource:
    fields: dict[str, list[str]] = {k: [] for k in HUB_KEYS}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in fields or not value:
            raise ValueError(f"cannot read {part.strip()!r} in hub:{rest}: write <key>=<value> pairs joined by ',', "
                             f"keys {', '.join(HUB_KEYS)} (e.g. hub:library=saelens,model=gpt2-small)")
        fields[key].append(value)
    for key in ("author", "library"):
        if len(fields[key]) > 1:
            raise ValueError(f"hub:{rest} names {key}= twice; use one hub source for each")
    return HubSource(author=next(iter(fields["author"]), None), library=next(iter(fields["library"]), None),
                     repos=tuple(fields["repo"]) or ("*",), models=tuple(fields["model"]) or ("*",))


AnySource = RegistrySource | FolderSource | YamlSource | HubSource
Source = Annotated[AnySource, Field(discriminator="kind")]
SOURCES: TypeAdapter = TypeAdapter(Source)


def parse_source(text: str) -> AnySource:
    """The typed source a `--source` text names; a ValueError saying the accepted forms otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or not rest.strip():
        raise ValueError(f"cannot read source {text!r}; accepted: {SOURCE_FORMS}")
    if kind not in PARSERS:
        raise ValueError(f"unknown source kind {kind!r} in {text!r}; accepted: {SOURCE_FORMS}")
    return PARSERS[kind](rest)


class FoundSAE(BaseModel):
    """One SAE a source lists. (source, release, sae_id) is who it is; `content_hash` what it is, where known."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str = Field(description="the source's label (`RegistrySource.label`, ...)")
    release: str = Field("", description="the registry or YAML release, the hub repo id; '' for a folder")
    sae_id: str = Field(description="the release's sae_id, the hub repo's SAE folder, or the SAE directory's path or "
                                    "URL")
    spec: str = Field(description="what `storage.sae_sources.load_sae_spec` loads")
    model: str = Field(description="the model it was trained on (registry `model`, cfg.json's model_name)")
    hook: str = Field("", description="the hook it reads; '' where the source does not say")
    content_hash: str | None = Field(None, description="the weights' content hash, where known without a download")

    @property
    def key(self) -> tuple[str, str, str]:
        return self.source, self.release, self.sae_id


class Listing(BaseModel):
    """What listing one source gave: the SAEs found, and the entries that look like SAEs but cannot be read, each as
    (its path or name, a one-line reason), which a watch reports (summary, artifact) instead of failing the listing."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    found: list[FoundSAE] = Field(default_factory=list)
    unreadable: list[tuple[str, str]] = Field(default_factory=list)
