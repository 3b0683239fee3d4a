"""Published TransformerLens models: which names make loading run code from the model's repository."""

from __future__ import annotations

TRUST_ENV = "SAGE_TRUST_REMOTE_CODE"  # "1" where the user allowed it (the CLI's --trust-remote-code sets it)


def remote_code_name(name: str) -> str | None:
    """The official name of a TransformerLens model whose loading turns on `trust_remote_code` (it runs Python code
    from the model's Hugging Face repository), else None. TransformerLens forces it for names starting with
    NEED_REMOTE_CODE_MODELS, and its config for PhiForCausalLM (phi-1, phi-1_5) sets it too."""
    from transformer_lens.loading_from_pretrained import NEED_REMOTE_CODE_MODELS, get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        return None
    return official if official.startswith((*NEED_REMOTE_CODE_MODELS, "microsoft/phi-1")) else None


def check_remote_code(name: str, allowed: bool) -> None:
    """Refuse, in one line, a model whose loading runs its repository's code unless the user allowed it."""
    remote = remote_code_name(name)
    if remote and not allowed:
        raise ValueError(f"loading {remote} makes TransformerLens run Python code from its Hugging Face repository "
                         f"(trust_remote_code); pass --trust-remote-code (or set {TRUST_ENV}=1 where the flow runs) "
                         "if you trust that code")
