"""`py:<module>:<attr>` SAE specs: an SAELike object, or a zero-argument factory of one. They IMPORT AND RUN PYTHON
CODE, so they are refused unless the process allows them (SAGE_ALLOW_PY_SPECS=1: the `sage` CLI sets it for the specs
its user typed; the standing service's worker only when started with --allow-py-specs). The factory is called once
per process."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import threading
from typing import Any

from sage_core.zoo.sae import LoadedSAE, SAELike, sae_hook_name, wrap_sae
from storage.sae_names import SAESpecError, close_matches

PY_SPECS_ENV = "SAGE_ALLOW_PY_SPECS"


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


