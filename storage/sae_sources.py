"""Every way a user names an SAE, resolved into one `LoadedSAE`:

    zoo:<sae>  (with model_name)  or  zoo:<model>/<sae>    an SAE of the built-in zoo under SAGE_HOME
    <directory>                                            SAELens' layout: cfg.json + sae_weights.safetensors
    <release>/<sae_id>  or  <release>:<sae_id>             the SAELens registry (SAE.from_pretrained)
    hf:<repo_id>:<folder>                                  SAELens' layout in a Hugging Face repo no shipped registry
                                                           names (SAE.from_pretrained(repo_id, folder)); a lab's
                                                           own releases, e.g. from a registry-format YAML
    py:<module>:<attr>                                     an SAELike object, or a zero-argument factory of one

`py:` specs IMPORT AND RUN PYTHON CODE (the module, then the factory): `storage.py_specs` says when they are allowed.

Each form is one class registered with `@spec_form` (`SpecForm`: how it is matched, loaded, checked, named and
hashed), tried in the order registered; a new form is one class here. Zoo and directory SAEs are loaded by
`storage.sae_local`, hub SAEs by `storage.sae_hub`, `py:` specs by `storage.py_specs`.

Registry names are checked against sae_lens' own directory before any network access, and a hub that cannot be
reached gives one line, fast, instead of a minute of retries (`storage.sae_hub`). `check_specs` runs every such check
(no weights loaded, no code run) so a spec that names nothing fails before any work. A registry or `hf:` SAE whose
files are in the local Hugging Face cache gets their content hash, the one a folder or the zoo gives the same files.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from sage_core.zoo.sae import LoadedSAE
from storage.atomic import is_complete
from storage.home import SageHome
from storage.py_specs import _check_py, _load_py
from storage.sae_hub import (
    SAE_CFG,
    SAE_WEIGHTS,
    HubSAE,
    hub_content_hash,
    load_hf,
    load_registry,
    registry_location,
    split_hf,
)
from storage.sae_hub import sae_files_hash as _dir_weights_hash
from storage.sae_local import _check_dir, _load_dir, _load_zoo, _zoo_name, list_zoo_saes
from storage.sae_names import (
    REGISTRY_HINT,
    SAESpecError,
    check_registry,
    close_matches,
    registry_releases,
    split_registry,
)

__all__ = ["FORMS", "SPEC_FORMS", "SAESpecError", "SpecForm", "check_specs", "distinct_specs", "list_zoo_saes",
           "load_sae_spec", "sae_dir_of", "spec_form"]

FORMS = ("zoo:<sae> (with a model) or zoo:<model>/<sae>; a directory with cfg.json + sae_weights.safetensors; "
         "<release>/<sae_id> or <release>:<sae_id> from the SAELens registry; hf:<repo_id>:<folder>; "
         "py:<module>:<attr>")


# -- the spec forms: one class each, registered in the order a spec is tried --------------------------------------
# ruff: noqa: ARG002 - every form takes the one signature; most need only part of it
class SpecForm(ABC):
    """One way a user names an SAE. `match` reads a spec (None: not this form; a one-line SAESpecError: this form,
    but it names nothing); the rest take what `match` read. Adding a form is one class with `@spec_form`."""

    kind: ClassVar[str]

    @abstractmethod
    def match(self, spec: str) -> Any | None:
        """What the spec names, if it is of this form."""

    @abstractmethod
    def load(self, what: Any, home: SageHome, model_name: str | None) -> LoadedSAE:
        """The SAE, loaded."""

    @abstractmethod
    def check(self, what: Any, home: SageHome, model_name: str | None, zoo_names: list[str] | tuple[str, ...]) -> None:
        """Fail in one line if `what` names nothing: no weights loaded, no code run, no network."""

    @abstractmethod
    def name(self, what: Any, home: SageHome, model_name: str | None) -> tuple[str, str]:
        """(the name its resolved SAE carries, where its files are: a resolved path or the spec itself)."""

    def content_hash(self, what: Any, home: SageHome, model_name: str | None) -> str | None:
        """Its content hash where known without loading it or running code; None otherwise."""
        return None

    def directory(self, what: Any, home: SageHome, model_name: str | None) -> Path | None:
        """The directory under `home` that holds its files, if any."""
        return None


SPEC_FORMS: list[SpecForm] = []


def spec_form(cls: type[SpecForm]) -> type[SpecForm]:
    """Class decorator: try this form after the ones registered before it; a form with its own prefix (`<kind>:`)
    before the forms that read any text (a directory, then the registry's `<release>:<sae_id>`)."""
    if any(f.kind == cls.kind for f in SPEC_FORMS):
        raise ValueError(f"SAE spec form {cls.kind!r} registered twice")
    at = len(SPEC_FORMS)
    if getattr(cls, "prefix", None):
        at = next((i for i, f in enumerate(SPEC_FORMS) if not getattr(f, "prefix", None)), at)
    SPEC_FORMS.insert(at, cls())
    return cls


class _Prefixed(SpecForm):
    prefix: ClassVar[str]

    def match(self, spec: str) -> str | None:
        return spec[len(self.prefix):] if spec.startswith(self.prefix) else None


@spec_form
class ZooForm(_Prefixed):
    """zoo:<sae> (with a model) or zoo:<model>/<sae>: an SAE of the built-in zoo under SAGE_HOME."""

    kind, prefix = "zoo", "zoo:"

    def load(self, what, home, model_name):
        return _load_zoo(what, home, model_name)

    def check(self, what, home, model_name, zoo_names):
        model, name = _zoo_name(what, home, model_name)
        have = list(zoo_names) if model == model_name else list_zoo_saes(home, model)
        if name not in have:
            raise SAESpecError(f"zoo SAE {model}/{name} does not exist; closest: {close_matches(name, have)} "
                               f"({len(have)} in the zoo of {model}; `sage zoo info` lists them)")

    def name(self, what, home, model_name):
        model, name = _zoo_name(what, home, model_name)
        return name, str(home.sae_dir(model, name).resolve())

    def content_hash(self, what, home, model_name):
        path = home.sae_dir(*_zoo_name(what, home, model_name))
        return _dir_weights_hash(path) if is_complete(path) else None

    def directory(self, what, home, model_name):
        return home.sae_dir(*_zoo_name(what, home, model_name))


@spec_form
class PyForm(_Prefixed):
    """py:<module>:<attr>: an SAELike object, or a zero-argument factory of one (imports and runs code)."""

    kind, prefix = "py", "py:"

    def load(self, what, home, model_name):
        return _load_py(what)

    def check(self, what, home, model_name, zoo_names):
        _check_py(what)

    def name(self, what, home, model_name):
        return what.split(":")[-1], f"py:{what}"


@spec_form
class HubForm(_Prefixed):
    """hf:<repo_id>:<folder>: SAELens' layout in a Hugging Face repo no shipped registry names."""

    kind, prefix = "hf", "hf:"

    def load(self, what, home, model_name):
        return load_hf(what)

    def check(self, what, home, model_name, zoo_names):
        split_hf(what)  # its repo is not looked up

    def name(self, what, home, model_name):
        repo_id, folder = split_hf(what)
        return f"{repo_id}/{folder}", f"hf:{repo_id}:{folder}"

    def content_hash(self, what, home, model_name):
        return hub_content_hash(HubSAE(*split_hf(what), {}))


@spec_form
class DirForm(SpecForm):
    """A directory in SAELens' layout: cfg.json + sae_weights.safetensors."""

    kind = "dir"

    def match(self, spec: str) -> Path | None:
        path = Path(spec).expanduser()
        if path.is_dir():
            return path
        if path.exists():
            raise SAESpecError(f"{spec} is a file; pass the directory holding {SAE_CFG} and {SAE_WEIGHTS}")
        if spec.startswith((".", "/", "~")):  # no release name starts so: answer without reading the registry
            raise SAESpecError(f"no SAE directory at {spec}; accepted forms: {FORMS}")
        return None

    def load(self, what, home, model_name):
        return _load_dir(what)

    def check(self, what, home, model_name, zoo_names):
        _check_dir(what)

    def name(self, what, home, model_name):
        return what.resolve().name, str(what.resolve())

    def content_hash(self, what, home, model_name):
        return _dir_weights_hash(what)

    def directory(self, what, home, model_name):
        return what.resolve() if what.resolve().is_relative_to(home.root) else None


@spec_form
class RegistryForm(SpecForm):
    """<release>/<sae_id> or <release>:<sae_id>: the SAELens registry (SAE.from_pretrained)."""

    kind = "registry"

    def match(self, spec: str) -> tuple[str, str] | None:
        releases = registry_releases()
        split = split_registry(spec, releases)
        if split is not None and all(split):
            return split
        if os.sep in spec and Path(spec.split(os.sep)[0]).is_dir():
            raise SAESpecError(f"no SAE directory at {spec}; accepted forms: {FORMS}")
        if "/" in spec:
            release = spec.split("/", 1)[0]
            raise SAESpecError(f"{spec!r} is neither a directory nor a known SAELens release/sae_id: unknown SAELens "
                               f"release {release!r} (closest: {close_matches(release, list(releases))}); see "
                               f"{REGISTRY_HINT} for the list")
        return None

    def load(self, what, home, model_name):
        return load_registry(*what)

    def check(self, what, home, model_name, zoo_names):
        check_registry(*what)

    def name(self, what, home, model_name):
        return f"{what[0]}/{what[1]}", f"{what[0]}/{what[1]}"

    def content_hash(self, what, home, model_name):
        return hub_content_hash(registry_location(*what))


# -- the one entry point ------------------------------------------------------------------------------------------
def _classify(spec: str) -> tuple[SpecForm, Any]:
    """(the form, what it read) of a spec, the forms tried in their order; a one-line SAESpecError for a spec of no
    accepted form."""
    spec = spec.strip()
    if not spec:
        raise SAESpecError(f"empty SAE spec; accepted forms: {FORMS}")
    for form in SPEC_FORMS:
        what = form.match(spec)
        if what is not None:
            return form, what
    raise SAESpecError(f"cannot read SAE spec {spec!r}; accepted forms: {FORMS}")


def load_sae_spec(spec: str, home: SageHome | None = None, model_name: str | None = None) -> LoadedSAE:
    """Resolve any SAE spec (see the module docstring) into a `LoadedSAE`; errors are one line saying what to do.

    Run `sage_core.zoo.sae.check_sae(loaded, model)` before computing with it.
    """
    form, what = _classify(spec)
    return form.load(what, home or SageHome(), model_name)


def sae_dir_of(spec: str, home: SageHome, model_name: str | None = None) -> Path | None:
    """The directory under `home` that holds a spec's files (a zoo SAE, or an SAE directory inside SAGE_HOME); None
    for a registry, `hf:` or `py:` SAE and for a directory elsewhere."""
    form, what = _classify(spec)
    return form.directory(what, home, model_name)


def check_specs(specs: list[str] | tuple[str, ...], home: SageHome, model_name: str | None,
                zoo_names: list[str] | tuple[str, ...]) -> None:
    """Fail in one line, before any work, if a spec names nothing: `zoo:<sae>` not among `zoo_names` (the SAEs of
    `model_name`'s zoo, built or about to be), `zoo:<other model>/<sae>` not complete under `home`, a directory that
    does not exist or lacks SAELens' files, an unknown registry release or sae_id, an `hf:` spec of the wrong form
    (its repo is not looked up), a `py:` spec that is not allowed or whose module cannot be found. Loads no weights,
    calls no factory, needs no network."""
    errors = []
    for spec in specs:
        try:
            form, what = _classify(spec)
            form.check(what, home, model_name, zoo_names)
        except SAESpecError as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise SAESpecError(errors[0])
    if errors:
        raise SAESpecError(f"{len(errors)} SAE specs name nothing: " + "; ".join(errors))


# -- names ----------------------------------------------------------------------------------------------------------
def _spec_name(spec: str, home: SageHome, model_name: str | None) -> tuple[str, str, Any]:
    """(name, where, (form, what)) of a spec: the name its resolved SAE carries (what `load_sae_spec` gives it:
    units, core metrics and rows are keyed by it) and where its files are (a resolved path, or the spec itself)."""
    form, what = _classify(spec)
    name, where = form.name(what, home, model_name)
    return name, where, (form, what)


def _spec_hash(found: tuple[SpecForm, Any], home: SageHome, model_name: str | None) -> str | None:
    """The content hash a spec's SAE will carry where it is known without loading it or running code (a complete zoo
    SAE's or a directory's files, a hub SAE whose files are in the local cache); None otherwise."""
    form, what = found
    try:
        return form.content_hash(what, home, model_name)
    except (OSError, KeyError, ValueError):
        return None


def distinct_specs(specs: list[str] | tuple[str, ...], home: SageHome, model_name: str | None) -> list[str]:
    """`specs` with each SAE once, in order; a one-line SAESpecError, before any work, when two specs name different
    SAEs that would carry the same name (two directories called alike, a directory named like a zoo SAE, two `py:`
    factories of one attribute name): an evaluation keys its units, core metrics and rows by name and would merge
    them. Two specs of one SAE (the same spec, the same path, or files of the same content hash) are one. Run
    `check_specs` first: every spec must name something. Hashes only the files of specs whose names clash."""
    named = [(spec, *_spec_name(spec, home, model_name)) for spec in specs]
    counts: dict[str, int] = {}
    for _, name, _, _ in named:
        counts[name] = counts.get(name, 0) + 1
    hashes: dict[str, str | None] = {}
    first: dict[str, tuple[str, str, str | None]] = {}
    out = []
    for spec, name, where, found in named:
        h = None
        if counts[name] > 1:
            h = hashes[where] if where in hashes else hashes.setdefault(where, _spec_hash(found, home, model_name))
        if name not in first:
            first[name] = (spec, where, h)
            out.append(spec)
            continue
        spec0, where0, h0 = first[name]
        if where == where0 or (h is not None and h == h0):
            continue  # the same SAE again: evaluated once
        raise SAESpecError(
            f"SAE specs {spec0!r} and {spec!r} are two different SAEs with the same name {name!r} (content hashes "
            f"{h0 or 'unknown'} and {h or 'unknown'}); an evaluation keys its results by name and would merge them: "
            "copy one into a directory of another name and pass that, or evaluate them in separate runs")
    return out
