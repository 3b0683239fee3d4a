"""Resolving SAE specs (zoo, directory, registry, python object) and the checks run before any compute."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sage_core.sae_source import LoadedSAE, SAECheckError, SAELike, check_sae, weights_hash, wrap_sae
from storage.atomic import write_once
from storage.home import SageHome
from storage.sae_sources import SAESpecError, list_zoo_saes, load_sae_spec

D_MODEL, N_HEADS, D_HEAD = 16, 2, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(d_vocab=50, d_model=D_MODEL, n_layers=2, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=32,
                                  n_ctx=16, act_fn="gelu", device="cpu")
    return HookedTransformer(cfg, move_to_device=False)


def _standard(hook="blocks.0.hook_resid_post", d_in=D_MODEL, d_sae=32, seed=0):
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _topk_hook_z(seed=1):
    torch.manual_seed(seed)
    return TopKSAE(TopKSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=32, k=4, reshape_activations="hook_z",
                                 metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")))


def _x(n=8, d=D_MODEL, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


class TinySAE:
    """An SAE that is not SAELens': the protocol is all SAGE needs."""

    hook_name = "blocks.0.hook_resid_pre"

    def __init__(self, d_in=D_MODEL, d_sae=24):
        g = torch.Generator().manual_seed(5)
        self.W_enc = torch.randn(d_in, d_sae, generator=g)
        self.W_dec = torch.randn(d_sae, d_in, generator=g)

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, f):
        return f @ self.W_dec


@pytest.fixture
def py_module(monkeypatch):
    mod = types.ModuleType("sage_test_fake_saes")
    mod.make_sae = TinySAE
    mod.ready = TinySAE()
    mod.not_an_sae = 3
    mod.no_hook = types.SimpleNamespace(encode=lambda x: x, decode=lambda f: f, W_dec=torch.eye(4))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


# -- directories, zoo ---------------------------------------------------------------------------------------------
def test_directory_in_saelens_layout_matches_the_original(tmp_path):
    sae = _standard()
    sae.save_model(tmp_path / "my-sae")
    loaded = load_sae_spec(str(tmp_path / "my-sae"))
    assert isinstance(loaded, LoadedSAE)
    assert (loaded.name, loaded.hook, loaded.source, loaded.arch) == ("my-sae", "blocks.0.hook_resid_post", "dir",
                                                                      "standard")
    assert (loaded.d_in, loaded.d_sae, loaded.width) == (D_MODEL, 32, 32)
    x = _x()
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(loaded.encode(x), f)
        torch.testing.assert_close(loaded.decode(f), sae.decode(f))
    torch.testing.assert_close(loaded.decoder(), sae.W_dec.detach())
    assert loaded.encode(x).dtype == torch.float32 and not loaded.encode(x).requires_grad


def test_content_hash_is_stable_and_follows_the_weights(tmp_path):
    sae = _standard()
    sae.save_model(tmp_path / "a")
    h1 = load_sae_spec(str(tmp_path / "a")).content_hash
    assert load_sae_spec(str(tmp_path / "a")).content_hash == h1
    w = load_file(str(tmp_path / "a" / "sae_weights.safetensors"))
    w["W_dec"][0, 0] += 1.0
    save_file(w, str(tmp_path / "a" / "sae_weights.safetensors"))
    assert load_sae_spec(str(tmp_path / "a")).content_hash != h1
    # in memory: the same over equal weights, different when one changes
    a, b = _standard(), _standard()
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.b_enc[3] += 1e-3
    assert weights_hash(a) != weights_hash(b)
    assert wrap_sae(a, name="a", source="object").content_hash == weights_hash(a)


def test_zoo_spec_and_listing(tmp_path, model):
    home = SageHome(tmp_path)
    for name, seed in (("blocks.0.hook_resid_post--standard-32", 0), ("blocks.0.hook_resid_post--topk-32", 1)):
        with write_once(home.sae_dir("tiny", name), {"spec": name}) as tmp:
            _standard(seed=seed).save_model(tmp)
    home.sae_dir("tiny", "half-written").mkdir()  # no _COMPLETE.json
    assert list_zoo_saes(home, "tiny") == ["blocks.0.hook_resid_post--standard-32", "blocks.0.hook_resid_post--topk-32"]
    assert list_zoo_saes(home, "other") == []

    a = load_sae_spec("zoo:blocks.0.hook_resid_post--standard-32", home=home, model_name="tiny")
    b = load_sae_spec("zoo:tiny/blocks.0.hook_resid_post--standard-32", home=home)
    assert a.name == b.name == "blocks.0.hook_resid_post--standard-32" and a.source == "zoo"
    assert a.content_hash == b.content_hash
    check_sae(a, model)
    with pytest.raises(SAESpecError, match="needs a model"):
        load_sae_spec("zoo:blocks.0.hook_resid_post--standard-32", home=home)
    with pytest.raises(SAESpecError, match=r"closest: blocks\.0\.hook_resid_post--topk-32"):
        load_sae_spec("zoo:tiny/blocks.0.hook_resid_post--topk-31", home=home)
    with pytest.raises(SAESpecError, match="incomplete"):
        load_sae_spec("zoo:tiny/half-written", home=home)


# -- python objects -----------------------------------------------------------------------------------------------
def test_py_object_and_factory(py_module, model):
    for attr in ("make_sae", "ready"):
        loaded = load_sae_spec(f"py:sage_test_fake_saes:{attr}")
        assert (loaded.name, loaded.source, loaded.arch, loaded.hook) == (attr, "object", "custom",
                                                                          "blocks.0.hook_resid_pre")
        assert (loaded.d_in, loaded.d_sae) == (D_MODEL, 24)
        assert isinstance(loaded.sae, SAELike)
        x = _x()
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), loaded.sae.decode(loaded.sae.encode(x)))
        check_sae(loaded, model)
    assert load_sae_spec("py:sage_test_fake_saes:make_sae").content_hash == \
        load_sae_spec("py:sage_test_fake_saes:ready").content_hash


def test_py_spec_errors(py_module):
    with pytest.raises(SAESpecError, match="neither an SAE"):
        load_sae_spec("py:sage_test_fake_saes:not_an_sae")
    with pytest.raises(SAESpecError, match="no hook_name"):
        load_sae_spec("py:sage_test_fake_saes:no_hook")
    with pytest.raises(SAESpecError, match="closest: make_sae"):
        load_sae_spec("py:sage_test_fake_saes:make_sea")
    with pytest.raises(SAESpecError, match="cannot import"):
        load_sae_spec("py:no_such_module_anywhere:x")
    with pytest.raises(SAESpecError, match=r"py:<module>:<attr>"):
        load_sae_spec("py:only_module")


# -- hook_z -------------------------------------------------------------------------------------------------------
def test_hook_z_sae_takes_flat_input(tmp_path, model):
    sae = _topk_hook_z()
    assert sae.hook_z_reshaping_mode
    z = torch.randn(6, N_HEADS, D_HEAD)
    with torch.no_grad():
        f_ref = sae.encode(z)  # SAELens' own reshaping: (n, heads, d_head) in
        out_ref = sae.decode(f_ref)  # (n, heads, d_head) out
    sae.save_model(tmp_path / "z")
    loaded = load_sae_spec(str(tmp_path / "z"))
    assert loaded.hook == "blocks.1.attn.hook_z" and loaded.arch == "topk" and loaded.d_in == N_HEADS * D_HEAD
    f = loaded.encode(z.reshape(6, -1))
    assert f.shape == (6, 32) and int((f != 0).sum(1).max()) <= 4
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(loaded.decode(f), out_ref.reshape(6, -1))
    check_sae(loaded, model)


# -- check_sae ----------------------------------------------------------------------------------------------------
def test_check_rejects_width_mismatch(model):
    loaded = wrap_sae(_standard(d_in=24), name="wide", source="object")
    with pytest.raises(SAECheckError, match=r"SAE 'wide' has d_in=24 but hook blocks\.0\.hook_resid_post has width "
                                            r"16: it was trained on another model or hook"):
        check_sae(loaded, model)
    z = wrap_sae(_standard(hook="blocks.0.attn.hook_z", d_in=D_HEAD), name="one-head", source="object")
    with pytest.raises(SAECheckError, match=r"d_in=8 but hook blocks\.0\.attn\.hook_z has width 16"):
        check_sae(z, model)


def test_check_rejects_unknown_hook_naming_close_ones(model):
    loaded = wrap_sae(_standard(hook="blocks.0.hook_resid_postt"), name="typo", source="object")
    with pytest.raises(SAECheckError, match=r"closest: blocks\.0\.hook_resid_post"):
        check_sae(loaded, model)
    other = wrap_sae(_standard(hook="blocks.7.hook_resid_post"), name="deep", source="object")
    with pytest.raises(SAECheckError, match="does not have"):
        check_sae(other, model)


@pytest.mark.parametrize("tensor", ["W_dec", "b_enc", "W_enc"])
def test_check_rejects_non_finite_weights(model, tensor):
    sae = _standard()
    with torch.no_grad():
        getattr(sae, tensor).view(-1)[0] = float("nan") if tensor != "W_enc" else float("inf")
    with pytest.raises(SAECheckError, match=rf"SAE 'bad' has NaN/inf in {tensor}: the weights file is corrupt"):
        check_sae(wrap_sae(sae, name="bad", source="object"), model)


def test_check_rejects_wrong_shapes(model):
    class Broken(TinySAE):
        def encode(self, x):
            return super().encode(x)[:, :5]

    with pytest.raises(SAECheckError, match=r"codes \(2, 5\)"):
        check_sae(wrap_sae(Broken(), name="broken", source="object"), model)

    class Crashes(TinySAE):
        def decode(self, f):
            raise RuntimeError("boom")

    with pytest.raises(SAECheckError, match="smoke decode.*boom"):
        check_sae(wrap_sae(Crashes(), name="crash", source="object"), model)


def test_error_messages_are_one_line(model):
    loaded = wrap_sae(_standard(d_in=24), name="wide", source="object")
    with pytest.raises(SAECheckError) as e:
        check_sae(loaded, model)
    assert "\n" not in str(e.value)


# -- registry and bad specs ---------------------------------------------------------------------------------------
def test_unknown_release_fails_fast_without_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the hub was called")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(no_network))
    monkeypatch.setattr("storage.sae_sources._hub_reachable", no_network)
    start = time.monotonic()
    with pytest.raises(SAESpecError, match=r"unknown SAELens release 'gpt2-smal-res-jb'.*gpt2-small-res-jb") as e:
        load_sae_spec("gpt2-smal-res-jb/blocks.0.hook_resid_pre")
    assert "\n" not in str(e.value)
    with pytest.raises(SAESpecError, match=r"unknown SAELens release 'no-such-release'"):
        load_sae_spec("no-such-release:blocks.0.hook_resid_pre")
    with pytest.raises(SAESpecError, match=r"has no SAE 'blocks\.0\.hook_resid_prex'.*blocks\.0\.hook_resid_pre"):
        load_sae_spec("gpt2-small-res-jb:blocks.0.hook_resid_prex")
    assert time.monotonic() - start < 2.0


def test_known_release_with_unreachable_hub_says_so(monkeypatch):
    def offline_from_pretrained(cls, release, sae_id, **kw):
        from huggingface_hub import constants

        assert constants.HF_HUB_OFFLINE  # offline mode: the cache only, no retries
        raise OSError("cannot find the requested files in the local cache")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(offline_from_pretrained))
    monkeypatch.setattr("storage.sae_sources._hub_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(SAESpecError, match=r"hub .* is unreachable.*directory") as e:
        load_sae_spec("gpt2-small-res-jb/blocks.0.hook_resid_pre")
    assert "\n" not in str(e.value) and time.monotonic() - start < 2.0


def test_registry_sae_is_wrapped(monkeypatch, model):
    sae = _standard(hook="blocks.1.hook_resid_pre")
    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, release, sae_id, **kw: sae))
    monkeypatch.setattr("storage.sae_sources._hub_reachable", lambda *a, **k: True)
    loaded = load_sae_spec("gpt2-small-res-jb/blocks.1.hook_resid_pre")
    assert (loaded.name, loaded.source, loaded.hook) == ("gpt2-small-res-jb/blocks.1.hook_resid_pre", "registry",
                                                         "blocks.1.hook_resid_pre")
    check_sae(loaded, model)


@pytest.mark.parametrize("spec", ["", "just-a-word", "./no/such/dir"])
def test_bad_spec_forms(spec):
    with pytest.raises(SAESpecError, match="accepted forms"):
        load_sae_spec(spec)


def test_directory_without_saelens_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAESpecError, match="not an SAE directory"):
        load_sae_spec(str(tmp_path / "empty"))
    (tmp_path / "cfg-only").mkdir()
    (tmp_path / "cfg-only" / "cfg.json").write_text(json.dumps({}))
    with pytest.raises(SAESpecError, match="missing sae_weights.safetensors"):
        load_sae_spec(str(tmp_path / "cfg-only"))


def test_known_release_offline_end_to_end(monkeypatch, tmp_path):
    """The real SAE.from_pretrained in huggingface_hub's offline mode, with an empty cache: one line, no retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("storage.sae_sources._hub_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(SAESpecError, match=r"not in the local Hugging Face cache and the hub .* is unreachable") as e:
        load_sae_spec("gpt2-small-res-jb/blocks.0.hook_resid_pre")
    assert "\n" not in str(e.value) and time.monotonic() - start < 20  # the registry YAML parse takes a few seconds
    assert not constants.HF_HUB_OFFLINE  # offline mode was only for the call


def test_hub_probe_is_bounded(monkeypatch):
    from storage.sae_sources import _hub_reachable

    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:81")  # unroutable: a connect would hang without a timeout
    start = time.monotonic()
    assert _hub_reachable(timeout=0.5) is False
    assert time.monotonic() - start < 2.0
