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

from sage_core.zoo.sae import LoadedSAE, SAECheckError, SAELike, check_sae, weights_hash, wrap_sae
from storage.atomic import write_once
from storage.home import SageHome
from storage.py_specs import PY_SPECS_ENV
from storage.sae_names import registry_directory, registry_spec, split_registry
from storage.sae_sources import SAESpecError, check_specs, list_zoo_saes, load_sae_spec

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
    mod.calls = 0

    def counted():
        mod.calls += 1
        return TinySAE()

    def broken():
        return TinySAE(d_sae=None)  # a TypeError raised inside the factory, not by calling it

    mod.counted, mod.broken, mod.needs_args = counted, broken, lambda width: TinySAE(d_sae=width)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setenv(PY_SPECS_ENV, "1")  # the CLI allows the py: specs its user typed
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
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", no_network)
    # sae_lens parses its registry once per process (about a second here, beside its import): every check after
    # that is a dict lookup
    registry_directory()
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

        # the cache only, no retries: a cache-only converter (`local_files_only` per file), or offline mode
        assert kw.get("converter") is not None or constants.HF_HUB_OFFLINE
        raise OSError("cannot find the requested files in the local cache")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(offline_from_pretrained))
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", lambda *a, **k: "test")
    start = time.monotonic()
    with pytest.raises(SAESpecError, match=r"cannot find the requested files.*hub .* is unreachable \(test\).*directory") \
            as e:
        load_sae_spec("gpt2-small-res-jb/blocks.0.hook_resid_pre")
    assert "\n" not in str(e.value) and time.monotonic() - start < 2.0


def test_registry_sae_is_wrapped(monkeypatch, model):
    sae = _standard(hook="blocks.1.hook_resid_pre")
    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, release, sae_id, **kw: sae))
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", lambda *a, **k: None)
    loaded = load_sae_spec("gpt2-small-res-jb/blocks.1.hook_resid_pre")
    assert (loaded.name, loaded.source, loaded.hook) == ("gpt2-small-res-jb/blocks.1.hook_resid_pre", "registry",
                                                         "blocks.1.hook_resid_pre")
    check_sae(loaded, model)


@pytest.mark.parametrize("spec", ["", "just-a-word", "./no/such/dir"])
def test_bad_spec_forms(spec):
    with pytest.raises(SAESpecError, match="accepted forms"):
        load_sae_spec(spec)
    if spec:
        with pytest.raises(ValueError, match="accepted forms"):
            check_specs([spec], SageHome(), None, [])


def test_directory_without_saelens_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAESpecError, match="not an SAE directory"):
        load_sae_spec(str(tmp_path / "empty"))
    (tmp_path / "cfg-only").mkdir()
    (tmp_path / "cfg-only" / "cfg.json").write_text(json.dumps({}))
    with pytest.raises(SAESpecError, match="missing sae_weights.safetensors"):
        load_sae_spec(str(tmp_path / "cfg-only"))


@pytest.mark.parametrize("offline_env", [False, True], ids=["online-env", "HF_HUB_OFFLINE-env"])
def test_known_release_offline_end_to_end(monkeypatch, tmp_path, offline_env):
    """The real SAE.from_pretrained in huggingface_hub's offline mode, with an empty cache: one line, no retries;
    whatever HF_HUB_OFFLINE the environment set is what it is after the call."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_env)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", lambda *a, **k: "test")
    start = time.monotonic()
    with pytest.raises(SAESpecError, match=r"could not be read from the local Hugging Face cache \(.*\) and the hub "
                                           r".* is unreachable \(test\)") as e:
        load_sae_spec("gpt2-small-res-jb/blocks.0.hook_resid_pre")
    assert "\n" not in str(e.value)
    assert time.monotonic() - start < 20  # the registry YAML parse takes a few seconds
    assert constants.HF_HUB_OFFLINE is offline_env  # offline mode was only for the call


def test_hub_probe_is_bounded(monkeypatch):
    from storage.sae_hub import _hub_unreachable

    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:81")  # unroutable: a connect would hang without a timeout
    start = time.monotonic()
    assert _hub_unreachable(timeout=0.5)
    assert time.monotonic() - start < 2.0


# -- issue #15 item 6: errors keep their cause ------------------------------------------------------------------------
def test_an_unreachable_hub_says_why(monkeypatch):
    """Any probe error used to read as plain "offline"; now the reason travels into the one-line message."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    from storage.sae_hub import _hub_unreachable

    def refuse(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert "Name or service not known" in _hub_unreachable(timeout=0.5)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in _hub_unreachable(timeout=0.5)


def test_a_hub_that_answers_an_error_status_says_which(monkeypatch):
    import urllib.request

    from huggingface_hub import constants

    from storage.sae_hub import _hub_unreachable

    class Answer:
        status = 404

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Answer())
    assert "HTTP 404" in _hub_unreachable(timeout=0.5)


def test_an_unreadable_sae_directory_keeps_its_cause(tmp_path):
    _standard().save_model(tmp_path / "bad")
    (tmp_path / "bad" / "sae_weights.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(SAESpecError, match="SAELens could not load") as e:
        load_sae_spec(str(tmp_path / "bad"))
    assert e.value.__cause__ is not None and "\n" not in str(e.value)


def test_a_failing_state_dict_is_named_not_skipped():
    """A state_dict() that raises used to make the hash fall back to whatever tensors the attributes held."""

    class Odd(TinySAE):
        def state_dict(self):
            raise RuntimeError("weights are on a remote worker")

    with pytest.raises(SAECheckError, match="state_dict.*weights are on a remote worker") as e:
        weights_hash(Odd())
    assert e.value.__cause__ is not None and "\n" not in str(e.value)


def test_weights_outside_attributes_and_state_dict_still_change_the_hash():
    """Two SAEs with one decoder and different encoders kept in a container: the hash used to see only W_dec."""

    class Boxed:
        hook_name = "blocks.0.hook_resid_pre"

        def __init__(self, seed):
            g = torch.Generator().manual_seed(seed)
            self.params = {"W_enc": torch.randn(D_MODEL, 24, generator=g)}
            self.W_dec = torch.ones(24, D_MODEL)

        def encode(self, x):
            return torch.relu(x @ self.params["W_enc"])

        def decode(self, f):
            return f @ self.W_dec

    assert weights_hash(Boxed(1)) != weights_hash(Boxed(2))
    assert weights_hash(Boxed(1)) == weights_hash(Boxed(1))


def test_module_tensors_outside_its_state_dict_are_hashed():
    class Half(torch.nn.Module):
        hook_name = "blocks.0.hook_resid_pre"

        def __init__(self, seed):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.W_dec = torch.nn.Parameter(torch.ones(24, D_MODEL))
            self.W_enc = torch.randn(D_MODEL, 24, generator=g)  # a plain tensor: not in state_dict()

        def encode(self, x):
            return torch.relu(x @ self.W_enc)

        def decode(self, f):
            return f @ self.W_dec

    assert weights_hash(Half(1)) != weights_hash(Half(2))


def test_a_declared_width_that_disagrees_with_the_decoder_fails(model):
    """The width check compared d_sae with itself; now it compares the SAE's declared d_sae with its W_dec."""
    sae = TinySAE()
    sae.cfg = types.SimpleNamespace(d_sae=48)
    loaded = wrap_sae(sae, name="mislabelled", source="object")
    with pytest.raises(SAECheckError, match=r"declares d_sae=48 but its W_dec has 24 rows") as e:
        check_sae(loaded, model)
    assert "\n" not in str(e.value)
    check_sae(wrap_sae(TinySAE(), name="fine", source="object"), model)


def test_an_architecture_that_cannot_be_read_is_named():
    sae = TinySAE()

    def arch():
        raise KeyError("architecture")

    sae.cfg = types.SimpleNamespace(architecture=arch)
    with pytest.raises(SAECheckError, match="cfg.architecture\\(\\) failed.*KeyError") as e:
        wrap_sae(sae, name="odd", source="object")
    assert e.value.__cause__ is not None


def test_check_errors_keep_their_cause(model):
    class Crashes(TinySAE):
        def decode(self, f):
            raise RuntimeError("boom")

    with pytest.raises(SAECheckError) as e:
        check_sae(wrap_sae(Crashes(), name="crash", source="object"), model)
    assert isinstance(e.value.__cause__, RuntimeError)


# -- issue #15 item 13: code named by data runs only when allowed, and once ------------------------------------------
def test_py_factory_runs_once_per_process(py_module):
    for _ in range(3):
        loaded = load_sae_spec("py:sage_test_fake_saes:counted")
    assert py_module.calls == 1 and loaded.name == "counted"


def test_py_specs_are_refused_unless_allowed(py_module, monkeypatch):
    monkeypatch.delenv(PY_SPECS_ENV)
    with pytest.raises(SAESpecError, match=rf"runs Python code.*{PY_SPECS_ENV}=1") as e:
        load_sae_spec("py:sage_test_fake_saes:counted")
    assert "\n" not in str(e.value) and py_module.calls == 0
    with pytest.raises(ValueError, match=PY_SPECS_ENV):
        check_specs(["py:sage_test_fake_saes:counted"], SageHome(), None, [])
    monkeypatch.setenv(PY_SPECS_ENV, "0")
    with pytest.raises(SAESpecError, match=PY_SPECS_ENV):
        load_sae_spec("py:sage_test_fake_saes:counted")


def test_py_factory_errors_keep_their_cause(py_module):
    with pytest.raises(SAESpecError, match=r"py:sage_test_fake_saes:broken: the factory raised TypeError") as e:
        load_sae_spec("py:sage_test_fake_saes:broken")
    assert isinstance(e.value.__cause__, TypeError)
    with pytest.raises(SAESpecError, match="could not be called with no arguments"):
        load_sae_spec("py:sage_test_fake_saes:needs_args")


# -- issue #15 item 9: a spec that names nothing fails before any work ------------------------------------------------
def test_check_specs_names_what_is_missing_without_loading(tmp_path, py_module, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(no_loading))
    monkeypatch.setattr(SAE, "load_from_disk", classmethod(no_loading))
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", no_loading)
    _standard().save_model(tmp_path / "dir-sae")
    home = SageHome(tmp_path / "home")
    names = ["blocks.0.hook_resid_post--topk-32", "blocks.1.hook_resid_post--topk-32"]
    good = ["zoo:blocks.0.hook_resid_post--topk-32", f"zoo:tiny/{names[1]}", str(tmp_path / "dir-sae"),
            "gpt2-small-res-jb/blocks.0.hook_resid_pre", "py:sage_test_fake_saes:counted"]
    check_specs(good, home, "tiny", names)
    assert py_module.calls == 0, "checking a py: spec must not call its factory"
    bad = {"zoo:nope": r"zoo SAE tiny/nope does not exist; closest: .*sage zoo info",
           "zoo:blocks.0.hook_resid_post--topk-31": r"closest: blocks\.0\.hook_resid_post--topk-32",
           str(tmp_path / "missing"): "no SAE directory at",
           str(tmp_path): "not an SAE directory",
           "no-such-release/x": "unknown SAELens release 'no-such-release'",
           "gpt2-small-res-jb/blocks.0.hook_resid_prex": "has no SAE 'blocks.0.hook_resid_prex'",
           "py:sage_test_fake_saes:nothing": "has no attribute 'nothing'",
           "py:no_such_module_anywhere:x": "cannot find module"}
    for spec, message in bad.items():
        with pytest.raises(ValueError, match=message) as e:
            check_specs([*good[:1], spec], home, "tiny", names)
        assert "\n" not in str(e.value), spec
    with pytest.raises(ValueError, match=r"2 SAE specs name nothing: zoo SAE tiny/nope .*; zoo SAE tiny/nada ") as e:
        check_specs(["zoo:nope", "zoo:nada"], home, "tiny", names)
    with pytest.raises(ValueError, match="needs a model"):
        check_specs(["zoo:nope"], home, None, [])


# -- issue #18: sae_lens' own directory, and hf:<repo_id>:<folder> ----------------------------------------------------
def test_registry_names_come_from_sae_lens_directory(monkeypatch):
    """What SAGE accepts is what the directory sae_lens' loaders read says, including a release added to it."""
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    assert registry_directory() is directory
    for release, ids in {"lab": {"x/a": "p1", "b": "p2"}, "lab/x": {"a": "p3"}, "tags": {"sae:v1": "p4"}}.items():
        monkeypatch.setitem(directory, release, PretrainedSAELookup(
            release=release, repo_id="o/r", model="m", conversion_func=None, saes_map=ids, expected_var_explained={},
            expected_l0={}, neuronpedia_id={}, norm_scaling_factor={}, config_overrides=None))
    releases = tuple(directory)
    # "lab/x/a" splits as ("lab", "x/a") first, so lab/x's SAE needs the ':' form; so does an id holding ':'
    assert [registry_spec(r, i) for r, i in [("lab", "b"), ("lab", "x/a"), ("lab/x", "a"), ("tags", "sae:v1")]] == [
        "lab/b", "lab/x/a", "lab/x:a", "tags:sae:v1"]
    for r, i in [("lab", "b"), ("lab", "x/a"), ("lab/x", "a"), ("tags", "sae:v1")]:
        assert split_registry(registry_spec(r, i), releases) == (r, i)
    check_specs(["lab/x:a", "tags:sae:v1", "lab/b"], SageHome(), None, [])
    with pytest.raises(SAESpecError, match=r"SAELens release 'lab' has no SAE 'c'; valid ids include"):
        check_specs(["lab/c"], SageHome(), None, [])


def test_hf_specs_are_checked_without_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the hub was called")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(no_network))
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", no_network)
    check_specs(["hf:my-lab/saes:layer_3", "hf:my-lab/saes:res/l0/"], SageHome(), None, [])
    bad = {"hf:my-lab/saes": r"is not of the form hf:<repo_id>:<folder>",
           "hf:my-lab/saes:": r"is not of the form hf:<repo_id>:<folder>",
           "hf:justaname:l0": r"write the repo id as <org>/<name>",
           "hf:bad repo!/x:l0": r"'bad repo!/x' is not a Hugging Face repo id",
           "hf:o/r:a/../../b": r"may not contain '\.\.'"}
    for spec, message in bad.items():
        for check in (lambda s: check_specs([s], SageHome(), None, []), load_sae_spec):
            with pytest.raises(SAESpecError, match=message) as e:
                check(spec)
            assert "\n" not in str(e.value), spec


@pytest.mark.parametrize("offline_env", [False, True], ids=["online-env", "HF_HUB_OFFLINE-env"])
def test_an_hf_sae_not_in_the_cache_with_the_hub_unreachable(monkeypatch, tmp_path, offline_env):
    """The real SAE.from_pretrained with a repo id no registry names, offline, with an empty cache: one line."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_env)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", lambda *a, **k: "test")
    with pytest.raises(SAESpecError, match=r"SAELens SAE my-lab/saes/l0 could not be read from the local Hugging "
                                           r"Face cache \(.*\) and the hub .* is unreachable \(test\)") as e:
        load_sae_spec("hf:my-lab/saes:l0")
    assert "\n" not in str(e.value)
    assert constants.HF_HUB_OFFLINE is offline_env


def test_an_sae_not_in_the_cache_with_hf_hub_offline_set_says_to_unset_it(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE in the environment (usual on an offline cluster): the hub is never asked, and the one line says
    that switch, not the network, kept the SAE out."""
    from huggingface_hub import constants

    def no_network(*a, **k):
        raise AssertionError("the hub was probed")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    for spec in ("hf:my-lab/saes:l0", "gpt2-small-res-jb/blocks.0.hook_resid_pre"):
        with pytest.raises(SAESpecError, match=r"could not be read from the local Hugging Face cache \(.*\) and "
                                               r"HF_HUB_OFFLINE is set, so the hub was not asked; unset it") as e:
            load_sae_spec(spec)
        assert "\n" not in str(e.value), spec
        assert constants.HF_HUB_OFFLINE is True
