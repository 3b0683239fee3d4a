"""Where newly published SAEs are looked for, each a typed config, and what a source finds (`FoundSAE`).

    registry:<model>[:<release>]   the SAELens registry shipped with sae_lens (fnmatch patterns, ',' between several)
    dir:<path or fsspec URL>       a watched folder of SAE directories in SAELens' layout (cfg.json + weights)
    yaml:<path or fsspec URL>      a YAML file in the SAELens registry format, for a lab's own releases

`parse_source` reads that text form (the CLI's --source and a deployment's parameters); listing a source is storage's
(`storage.watch_sources.list_source`, which returns a `Listing`), deciding what is new is `sage_core.watch.plan`'s.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SOURCE_FORMS = "registry:<model>[:<release>], dir:<path or URL>, yaml:<path or URL> (patterns may use * and ?)"


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


Source = Annotated[RegistrySource | FolderSource | YamlSource, Field(discriminator="kind")]
SOURCES: TypeAdapter = TypeAdapter(Source)


def parse_source(text: str) -> RegistrySource | FolderSource | YamlSource:
    """The typed source a `--source` text names; a ValueError saying the accepted forms otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or not rest.strip():
        raise ValueError(f"cannot read source {text!r}; accepted: {SOURCE_FORMS}")
    if kind == "registry":
        models, _, releases = rest.partition(":")
        return RegistrySource(models=_patterns(models), releases=_patterns(releases) if releases else ("*",))
    if kind == "dir":
        return FolderSource(url=rest.strip())
    if kind == "yaml":
        return YamlSource(url=rest.strip())
    raise ValueError(f"unknown source kind {kind!r} in {text!r}; accepted: {SOURCE_FORMS}")


class FoundSAE(BaseModel):
    """One SAE a source lists. (source, release, sae_id) is who it is; `content_hash` what it is, where known."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str = Field(description="the source's label (`RegistrySource.label`, ...)")
    release: str = Field("", description="the registry or YAML release; '' for a folder")
    sae_id: str = Field(description="the release's sae_id, or the SAE directory's path or URL")
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
