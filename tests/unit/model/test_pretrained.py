"""A model whose loading runs its repository's code is refused by the flow's own task too (a deployment has no CLI)."""

import pytest

from sage_core.model.pretrained import TRUST_ENV, check_remote_code


def test_check_remote_code_refuses_unless_allowed():
    with pytest.raises(ValueError, match="trust_remote_code"):
        check_remote_code("Qwen/Qwen-7B", allowed=False)
    check_remote_code("Qwen/Qwen-7B", allowed=True)
    check_remote_code("gpt2", allowed=False)


def test_import_model_refuses_remote_code_before_loading(tmp_path, monkeypatch):
    from tasks.zoo import import_model

    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # refused before any load: nothing may be fetched
    with pytest.raises(ValueError, match="trust_remote_code"):
        import_model.fn("Qwen/Qwen-7B", "qwen", str(tmp_path))
    assert not (tmp_path / "zoo" / "qwen" / "model").exists()
