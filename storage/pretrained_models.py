"""Can a model be loaded here, without trying? A watch run asks before it evaluates a published SAE: a model that is
not the built-in one nor a TransformerLens model, or whose weights are neither imported under SAGE_HOME nor in the
local Hugging Face cache while the hub is unreachable, makes its SAEs `skipped` (with this reason), not failed."""

from __future__ import annotations

import os

from sage_core.config import pretrained_dir_name
from storage import zoo as zoo_store
from storage.home import SageHome

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def official_name(name: str) -> str | None:
    """TransformerLens' official name of `name` (an alias such as gpt2-small -> gpt2), None if it knows no such
    model."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def model_label(model: str, zoo_model: str | None = None) -> str:
    """The one name a model's results are kept under: the built-in zoo's own, else TransformerLens' official name
    (gpt2-small -> gpt2), else the name as given."""
    if model == zoo_model:
        return model
    return official_name(model) or model


def hub_unreachable_reason() -> str | None:
    """None if the Hugging Face hub answers now, else a sentence for an SAE whose weights are not cached."""
    from storage.sae_hub import _hub_unreachable

    why = _hub_unreachable()
    if why is None:
        return None
    return (f"its weights are not in the local Hugging Face cache and the hub is unreachable ({why}); download them "
            "where the hub is reachable (same HF_HOME) and the next watch run evaluates it")


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    def cached(f: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, f), str)

    return cached("config.json") and any(cached(f) for f in WEIGHT_FILES)


def why_not_loadable(model: str, home: SageHome, zoo_model: str) -> str | None:
    """None when `model` can be evaluated here: the built-in zoo's (`zoo_model`, built if missing), one imported under
    SAGE_HOME before, or a TransformerLens model whose weights are in the local Hugging Face cache or on a reachable
    hub (and whose loading runs no repository code unless allowed). Otherwise the reason, in one line."""
    from sage_core.model.pretrained import TRUST_ENV, remote_code_name
    from storage.sae_hub import _hub_unreachable

    if model == zoo_model:
        return None
    official = official_name(model)
    if official is None:
        return (f"{model!r} is neither the built-in zoo model ({zoo_model}) nor a TransformerLens model: SAGE cannot "
                "load it")
    remote = remote_code_name(model)
    if remote and os.environ.get(TRUST_ENV) != "1":
        return (f"loading {remote} runs code from its Hugging Face repository; set {TRUST_ENV}=1 where the watch "
                "runs if you trust it")
    if zoo_store.model_is_complete(home.model_dir(pretrained_dir_name(model))):
        return None
    if _in_hf_cache(official):
        return None
    unreachable = _hub_unreachable()
    if unreachable is None:
        return None
    return (f"the weights of {official} are not in the local Hugging Face cache and the hub is unreachable "
            f"({unreachable}); download them where the hub is reachable (same HF_HOME) and the next watch run "
            "evaluates these SAEs")
