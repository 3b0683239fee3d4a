"""Every way a user names an SAE, resolved into one `LoadedSAE`:

    zoo:<sae>  (with model_name)  or  zoo:<model>/<sae>    an SAE of the built-in zoo under SAGE_HOME
    <directory>                                            SAELens' layout: cfg.json + sae_weights.safetensors
    <release>/<sae_id>  or  <release>:<sae_id>             the SAELens registry (SAE.from_pretrained)
    hf:<repo_id>:<folder>                                  SAELens' layout in a Hugging Face repo no shipped registry
                                                           names (SAE.from_pretrained(repo_id, folder)); a lab's
                                                           own releases, e.g. from a registry-format YAML
    py:<module>:<attr>                                     an SAELike object, or a zero-argument factory of one

`py:` specs IMPORT AND RUN PYTHON CODE (the module, then the factory). They are refused unless the environment
allows them (SAGE_ALLOW_PY_SPECS=1): the `sage` CLI sets it for the specs its user typed; a deployment's parameters
are data and get it only where its operator sets the variable for the worker. The factory is called once per process.

Registry names are checked against sae_lens' own directory before any network access, and a hub that cannot be
reached gives one line, fast, instead of a minute of retries (`storage.sae_hub`). `check_specs` runs every such check
(no weights loaded, no code run) so a spec that names nothing fails before any work. A registry or `hf:` SAE whose
files are in the local Hugging Face cache gets their content hash, the one a folder or the zoo gives the same files.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import threading
from pathlib import Path
from typing import Any

from sage_core.zoo.sae import LoadedSAE, SAELike, sae_hook_name, wrap_sae
from storage.atomic import is_complete
from storage.home import SageHome
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
from storage.sae_names import (
    REGISTRY_HINT,
    SAESpecError,
    check_registry,
    close_matches,
    registry_releases,
    split_registry,
)

FORMS = ("zoo:<sae> (with a model) or zoo:<model>/<sae>; a directory with cfg.json + sae_weights.safetensors; "
         "<release>/<sae_id> or <release>:<sae_id> from the SAELens registry; hf:<repo_id>:<folder>; "
         "py:<module>:<attr>")
PY_SPECS_ENV = "SAGE_ALLOW_PY_SPECS"


# -- zoo ----------------------------------------------------------------------------------------------------------
def list_zoo_saes(home: SageHome, model_name: str) -> list[str]:
    """Names of the complete SAEs of `model_name`'s zoo, sorted (half-written ones are skipped)."""
    root = home.saes_root(model_name)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ".partial-" not in p.name and is_complete(p))


def _zoo_models(home: SageHome) -> list[str]:
    zoo = home.root / "zoo"
    return sorted(p.name for p in zoo.iterdir() if (p / "saes").is_dir()) if zoo.is_dir() else []


def _zoo_name(rest: str, home: SageHome, model_name: str | None) -> tuple[str, str]:
    """(model, sae) of `zoo:<rest>`."""
    if "/" in rest:
        model_name, name = rest.split("/", 1)
    else:
        name = rest
    if not name:
        raise SAESpecError(f"zoo spec 'zoo:{rest}' names no SAE; write zoo:<model>/<sae>")
    if not model_name:
        raise SAESpecError(f"zoo:{name} needs a model: write zoo:<model>/{name} or pass model_name "
                           f"(models under {home.root / 'zoo'}: {_zoo_models(home) or 'none'})")
    return model_name, name


def _load_zoo(rest: str, home: SageHome, model_name: str | None) -> LoadedSAE:
    from storage.zoo import load_sae

    model_name, name = _zoo_name(rest, home, model_name)
    path = home.sae_dir(model_name, name)
    if not is_complete(path):
        have = list_zoo_saes(home, model_name)
        if not have:
            raise SAESpecError(f"no zoo SAEs for model {model_name!r} under {home.saes_root(model_name)} "
                               f"(models there: {_zoo_models(home) or 'none'}); run `sage zoo build` or fix SAGE_HOME")
        state = "is incomplete" if path.is_dir() else "does not exist"
        raise SAESpecError(f"zoo SAE {model_name}/{name} {state}; closest: {close_matches(name, have)} "
                           f"({len(have)} in the zoo; rerun `sage zoo build` if it should be there)")
    sae = load_sae(path)
    return wrap_sae(sae, name=name, source="zoo", content_hash=_dir_weights_hash(path))


# -- directories --------------------------------------------------------------------------------------------------
def _check_dir(path: Path) -> None:
    missing = [f for f in (SAE_CFG, SAE_WEIGHTS) if not (path / f).is_file()]
    if missing:
        raise SAESpecError(f"{path} is not an SAE directory in SAELens' layout (missing {', '.join(missing)}); "
                           "save one with sae.save_model(dir)")


def _load_dir(path: Path) -> LoadedSAE:
    from sae_lens import SAE

    _check_dir(path)
    try:
        sae = SAE.load_from_disk(str(path), device="cpu")
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise SAESpecError(f"SAELens could not load the SAE in {path} ({type(e).__name__}: {msg}); "
                           "re-save it with sae.save_model(dir) from sae_lens>=6") from e
    if not sae_hook_name(sae):
        raise SAESpecError(f"the SAE in {path} names no hook (cfg.json metadata.hook_name); add it to cfg.json")
    return wrap_sae(sae, name=path.resolve().name, source="dir", content_hash=_dir_weights_hash(path))


# -- python objects -----------------------------------------------------------------------------------------------
_PY_OBJECTS: dict[tuple[str, int, str], Any] = {}
_PY_LOCK = threading.Lock()


def py_specs_allowed() -> bool:
    """May `py:` specs run code in this process? Only where SAGE_ALLOW_PY_SPECS=1 (the CLI sets it for its user)."""
    return os.environ.get(PY_SPECS_ENV) == "1"


def _py_parts(rest: str) -> tuple[str, str]:
    if rest.count(":") != 1 or not all(rest.split(":")):
        raise SAESpecError(f"'py:{rest}' is not of the form py:<module>:<attr> (e.g. py:my_pkg.saes:make_sae)")
    if not py_specs_allowed():
        raise SAESpecError(f"py:{rest} imports and runs Python code, which SAE specs from parameters or config may "
                           f"not do unless allowed: set {PY_SPECS_ENV}=1 where the flow runs (the sage CLI allows "
                           "the py: specs you type), or save the SAE and pass its directory")
    mod_name, attr = rest.split(":")
    return mod_name, attr


def _check_py(rest: str) -> None:
    """The form, the permission and that the module exists, without running the module or the factory (finding a
    dotted module imports its parent packages)."""
    mod_name, _ = _py_parts(rest)
    try:
        found = mod_name in sys.modules or importlib.util.find_spec(mod_name) is not None
    except (ImportError, ValueError) as e:
        raise SAESpecError(f"py:{rest}: cannot find module {mod_name!r} ({type(e).__name__}: {e}); check it is on "
                           "PYTHONPATH") from e
    if not found:
        raise SAESpecError(f"py:{rest}: cannot find module {mod_name!r}; check it is on PYTHONPATH")
    mod = sys.modules.get(mod_name)
    if mod is not None and not hasattr(mod, rest.split(":")[1]):
        _py_object(rest)  # raises the "has no attribute" error with the closest names


def _py_object(rest: str) -> Any:
    """The SAE object a `py:` spec names, its factory called at most once per process (per module object, so a
    reloaded module is called again); every failure is one line with its cause chained."""
    mod_name, attr = _py_parts(rest)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SAESpecError(f"py:{rest}: cannot import module {mod_name!r} ({e}); check it is on PYTHONPATH") from e
    if not hasattr(mod, attr):
        public = [n for n in dir(mod) if not n.startswith("_")]
        raise SAESpecError(f"py:{rest}: module {mod_name!r} has no attribute {attr!r}; closest: "
                           f"{close_matches(attr, public)}")
    key = (mod_name, id(mod), attr)
    with _PY_LOCK:  # score units run in threads: the factory must still run once
        if key not in _PY_OBJECTS:
            _PY_OBJECTS[key] = _make_py(rest, getattr(mod, attr))
        return _PY_OBJECTS[key]


def _make_py(rest: str, obj: Any) -> Any:
    if isinstance(obj, SAELike) and not isinstance(obj, type):
        return obj
    if not callable(obj):
        raise SAESpecError(f"py:{rest} is a {type(obj).__name__}, neither an SAE (encode, decode, W_dec) nor a "
                           "zero-argument factory of one")
    try:
        inspect.signature(obj).bind()
    except TypeError as e:
        raise SAESpecError(f"py:{rest} could not be called with no arguments ({e}); point it at an SAE object "
                           "or a zero-argument factory") from e
    except ValueError:  # no signature to read (some builtins): calling it is the only check
        pass
    try:
        return obj()
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise SAESpecError(f"py:{rest}: the factory raised {type(e).__name__}: {msg}") from e


def _load_py(rest: str) -> LoadedSAE:
    obj = _py_object(rest)
    if not isinstance(obj, SAELike):
        missing = [m for m in ("encode", "decode", "W_dec") if not hasattr(obj, m)]
        raise SAESpecError(f"py:{rest} gave a {type(obj).__name__} lacking {missing}: an SAE needs encode(x), "
                           "decode(f) and W_dec (d_sae, d_in)")
    if not sae_hook_name(obj):
        raise SAESpecError(f"py:{rest} gave a {type(obj).__name__} with no hook_name: set obj.hook_name to the "
                           "TransformerLens hook it reads (e.g. 'blocks.0.hook_resid_post')")
    return wrap_sae(obj, name=rest.split(":")[1], source="object")


# -- the one entry point ------------------------------------------------------------------------------------------
def _classify(spec: str) -> tuple[str, Any]:
    """(kind, what) of a spec: ("zoo", rest), ("py", rest), ("hf", rest), ("dir", path) or ("registry", (release,
    sae_id)); a one-line SAESpecError for a spec of no accepted form."""
    spec = spec.strip()
    if not spec:
        raise SAESpecError(f"empty SAE spec; accepted forms: {FORMS}")
    if spec.startswith("zoo:"):
        return "zoo", spec[len("zoo:"):]
    if spec.startswith("py:"):
        return "py", spec[len("py:"):]
    if spec.startswith("hf:"):
        return "hf", spec[len("hf:"):]
    path = Path(spec).expanduser()
    if path.is_dir():
        return "dir", path
    if path.exists():
        raise SAESpecError(f"{spec} is a file; pass the directory holding {SAE_CFG} and {SAE_WEIGHTS}")
    if spec.startswith((".", "/", "~")):  # no release name starts so: answer without reading the registry
        raise SAESpecError(f"no SAE directory at {spec}; accepted forms: {FORMS}")
    releases = registry_releases()
    split = split_registry(spec, releases)
    if split is not None and all(split):
        return "registry", split
    if os.sep in spec and Path(spec.split(os.sep)[0]).is_dir():
        raise SAESpecError(f"no SAE directory at {spec}; accepted forms: {FORMS}")
    if "/" in spec:
        release = spec.split("/", 1)[0]
        raise SAESpecError(f"{spec!r} is neither a directory nor a known SAELens release/sae_id: unknown SAELens "
                           f"release {release!r} (closest: {close_matches(release, list(releases))}); see "
                           f"{REGISTRY_HINT} for the list")
    raise SAESpecError(f"cannot read SAE spec {spec!r}; accepted forms: {FORMS}")


def load_sae_spec(spec: str, home: SageHome | None = None, model_name: str | None = None) -> LoadedSAE:
    """Resolve any SAE spec (see the module docstring) into a `LoadedSAE`; errors are one line saying what to do.

    Run `sage_core.zoo.sae.check_sae(loaded, model)` before computing with it.
    """
    kind, what = _classify(spec)
    if kind == "zoo":
        return _load_zoo(what, home or SageHome(), model_name)
    if kind == "py":
        return _load_py(what)
    if kind == "dir":
        return _load_dir(what)
    if kind == "hf":
        return load_hf(what)
    return load_registry(*what)


def sae_dir_of(spec: str, home: SageHome, model_name: str | None = None) -> Path | None:
    """The directory under `home` that holds a spec's files (a zoo SAE, or an SAE directory inside SAGE_HOME); None
    for a registry, `hf:` or `py:` SAE and for a directory elsewhere."""
    kind, what = _classify(spec)
    if kind == "zoo":
        return home.sae_dir(*_zoo_name(what, home, model_name))
    if kind == "dir" and what.resolve().is_relative_to(home.root):
        return what.resolve()
    return None


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
            kind, what = _classify(spec)
            if kind == "zoo":
                model, name = _zoo_name(what, home, model_name)
                have = list(zoo_names) if model == model_name else list_zoo_saes(home, model)
                if name not in have:
                    raise SAESpecError(f"zoo SAE {model}/{name} does not exist; closest: {close_matches(name, have)} "
                                       f"({len(have)} in the zoo of {model}; `sage zoo info` lists them)")
            elif kind == "py":
                _check_py(what)
            elif kind == "dir":
                _check_dir(what)
            elif kind == "hf":
                split_hf(what)
            else:
                check_registry(*what)
        except SAESpecError as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise SAESpecError(errors[0])
    if errors:
        raise SAESpecError(f"{len(errors)} SAE specs name nothing: " + "; ".join(errors))


# -- names ----------------------------------------------------------------------------------------------------------
def _spec_name(spec: str, home: SageHome, model_name: str | None) -> tuple[str, str, Any]:
    """(name, where, kind-and-what) of a spec: the name its resolved SAE carries (what `load_sae_spec` gives it:
    units, core metrics and rows are keyed by it) and where its files are (a resolved path, or the spec itself)."""
    kind, what = _classify(spec)
    if kind == "zoo":
        model, name = _zoo_name(what, home, model_name)
        path = home.sae_dir(model, name)
        return name, str(path.resolve()), (kind, path)
    if kind == "dir":
        return what.resolve().name, str(what.resolve()), (kind, what)
    if kind == "py":
        return what.split(":")[-1], f"py:{what}", (kind, what)
    if kind == "hf":
        repo_id, folder = split_hf(what)
        return f"{repo_id}/{folder}", f"hf:{repo_id}:{folder}", ("hub", HubSAE(repo_id, folder, {}))
    release, sae_id = what
    return f"{release}/{sae_id}", f"{release}/{sae_id}", ("registry", (release, sae_id))


def _spec_hash(found: tuple[str, Any]) -> str | None:
    """The content hash a spec's SAE will carry where it is known without loading it or running code: a complete zoo
    SAE's or a directory's files, a hub SAE whose files are in the local cache; None otherwise."""
    kind, what = found
    try:
        if kind == "zoo":
            return _dir_weights_hash(what) if is_complete(what) else None
        if kind == "dir":
            return _dir_weights_hash(what)
        if kind == "hub":
            return hub_content_hash(what)
        if kind == "registry":
            return hub_content_hash(registry_location(*what))
    except (OSError, KeyError, ValueError):
        return None
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
            h = hashes[where] if where in hashes else hashes.setdefault(where, _spec_hash(found))
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
