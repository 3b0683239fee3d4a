"""SAEs on local disk, loaded and checked: the built-in zoo under SAGE_HOME (`zoo:<sae>`, `zoo:<model>/<sae>`) and
directories in SAELens' layout (cfg.json + sae_weights.safetensors). `storage.sae_sources` registers the spec forms
that read them; each error is one line that says what to do."""

from __future__ import annotations

from pathlib import Path

from sage_core.zoo.sae import LoadedSAE, sae_hook_name, wrap_sae
from storage.atomic import is_complete
from storage.home import SageHome
from storage.sae_hub import SAE_CFG, SAE_WEIGHTS
from storage.sae_hub import sae_files_hash as _dir_weights_hash
from storage.sae_names import SAESpecError, close_matches


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
