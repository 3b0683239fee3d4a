"""The registry and YAML sources against a Hugging Face hub cache built here (HF_HUB_OFFLINE=1, no network): an SAE
of the built-in model in SAELens' layout, listed with the hook and content hash its cached files give, and loaded
through the real `SAE.from_pretrained` with the same hash."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
import torch
from huggingface_hub import constants
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory
from sae_lens.saes.sae import SAEMetadata

from sage_core.config import ZooConfig
from sage_core.model.transformer import build_model
from sage_core.watch.sources import parse_source
from sage_core.zoo.sae import check_sae
from storage.hashing import stable_hash
from storage.home import SageHome
from storage.sae_sources import SAESpecError, check_specs, load_sae_spec
from storage.watch_sources import list_source
from tests.acceptance.hf_cache import spy_from_pretrained, write_hub_files

REPO = "sage-lab/sage-test-saes"
RELEASE = "sage-test-res"
HOOK = "blocks.0.hook_resid_post"


def _sha(name: str, data: bytes) -> str:
    if name == "cfg.json":
        data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _files_hash(d) -> str:
    """The content hash by hand: sha256 over each file's name and its own truncated sha256 (cfg.json's of its JSON
    with sorted keys, no whitespace: the content, not the order it was written in)."""
    h = hashlib.sha256()
    for name in ("cfg.json", "sae_weights.safetensors"):
        h.update(name.encode())
        h.update(_sha(name, (d / name).read_bytes()).encode())
    return h.hexdigest()[:16]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The hub cache holds `res/l0` of REPO, an SAE of the built-in model; sockets refuse to connect."""
    model_cfg = ZooConfig.tiny().model
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model_cfg.d_model, d_sae=2 * model_cfg.d_model,
                                        metadata=SAEMetadata(hook_name=HOOK, model_name=model_cfg.name)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    src = tmp_path / "saved"
    sae.save_model(src)
    write_hub_files(tmp_path / "hf", REPO, {f"res/l0/{f}": src / f for f in ("cfg.json", "sae_weights.safetensors")})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read when each call is made
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*a, **k):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    calls = spy_from_pretrained(monkeypatch)
    model = build_model(model_cfg, d_vocab=40)
    return sae, src, calls, model, SageHome(tmp_path / "home")


def _register(monkeypatch, release, saes_map, **kw):
    monkeypatch.setitem(get_pretrained_saes_directory(), release, PretrainedSAELookup(**{
        "release": release, "repo_id": REPO, "model": "sage-test", "conversion_func": None, "saes_map": saes_map,
        "expected_var_explained": {}, "expected_l0": {}, "neuronpedia_id": {}, "norm_scaling_factor": {},
        "config_overrides": None, **kw}))


def test_registry_source_lists_and_loads_through_from_pretrained(hub, monkeypatch):
    sae, src, calls, model, home = hub
    # a release naming the cached SAE (id `layer0`, not a hook name: the hook must come from the cached cfg.json) and
    # an id whose files are not cached; added to the very dict sae_lens' loaders consult (it is cached), so
    # SAE.from_pretrained sees it too
    _register(monkeypatch, RELEASE, {"layer0": "res/l0", "blocks.0.hook_resid_pre": "res/l0-pre"})
    listing = list_source(parse_source(f"registry:{ZooConfig.tiny().model.name}"), home)
    assert listing.unreadable == []
    by_id = {f.sae_id: f for f in listing.found}
    assert set(by_id) == {"layer0", "blocks.0.hook_resid_pre"}
    cached, absent = by_id["layer0"], by_id["blocks.0.hook_resid_pre"]
    assert (cached.release, cached.spec, cached.model, cached.hook) == (RELEASE, f"{RELEASE}/layer0", "sage-test",
                                                                        HOOK)
    assert cached.content_hash == _files_hash(src)
    assert (absent.hook, absent.content_hash) == ("blocks.0.hook_resid_pre", None)  # not cached: the id says the hook
    assert calls == [], "listing loads nothing"

    check_specs([cached.spec], home, None, [])
    loaded = load_sae_spec(cached.spec)
    assert calls == [(RELEASE, "layer0")]
    assert (loaded.source, loaded.hook, loaded.name) == ("registry", HOOK, f"{RELEASE}/layer0")
    assert loaded.content_hash == cached.content_hash
    torch.testing.assert_close(loaded.decoder(), sae.W_dec.detach())
    check_sae(loaded, model)

    with pytest.raises(SAESpecError, match=r"could not be read from the local Hugging Face cache .*HF_HUB_OFFLINE") \
            as e:
        load_sae_spec(absent.spec)
    assert "\n" not in str(e.value)


def test_what_sae_lens_applies_beyond_the_files_is_in_the_hash(hub, monkeypatch):
    """Provenance overrides leave the hash of the files; a folded norm scaling factor makes another SAE of the same
    files (so another hash, listed and loaded alike); a converted release's files say nothing of it (no hash)."""
    sae, src, calls, model, home = hub
    _register(monkeypatch, "tagged", {"l0": "res/l0"}, config_overrides={"dataset_path": "some/dataset"})
    _register(monkeypatch, "scaled", {"l0": "res/l0"}, norm_scaling_factor={"l0": 2.0})
    _register(monkeypatch, "converted", {"l0": "res/l0"}, conversion_func="gemma_2")
    found = {f.release: f for f in list_source(parse_source("registry:sage-test"), home).found}
    files = _files_hash(src)
    assert found["tagged"].content_hash == files
    assert found["scaled"].content_hash == stable_hash(files, {"norm_scaling_factor": 2.0}) != files
    assert found["converted"].content_hash is None and found["converted"].hook == HOOK
    assert load_sae_spec(found["scaled"].spec).content_hash == found["scaled"].content_hash
    assert load_sae_spec(found["tagged"].spec).content_hash == files


def test_yaml_source_naming_the_repo_loads_the_same_files(hub, tmp_path):
    """A lab's own release: no shipped registry names REPO, so sae_lens takes the repo id as the release."""
    sae, src, calls, model, home = hub
    assert all(info.repo_id != REPO for info in get_pretrained_saes_directory().values())
    path = tmp_path / "lab.yaml"
    path.write_text(f"lab-res:\n  repo_id: {REPO}\n  model: sage-test\n  saes:\n    - id: layer0\n      path: res/l0\n"
                    f"other:\n  repo_id: {REPO}\n  model: gpt2-small\n  saes:\n    - id: x\n      path: y\n")
    listing = list_source(parse_source(f"yaml:{path}"), home)
    assert [(f.release, f.sae_id) for f in listing.found] == [("lab-res", "layer0"), ("other", "x")]
    found = listing.found[0]
    assert (found.spec, found.model, found.hook) == (f"hf:{REPO}:res/l0", "sage-test", HOOK)
    assert found.content_hash == _files_hash(src)
    assert listing.found[1].content_hash is None and listing.found[1].hook == ""

    check_specs([found.spec], home, None, [])
    loaded = load_sae_spec(found.spec)
    assert calls == [(REPO, "res/l0")]
    assert (loaded.source, loaded.hook, loaded.name) == ("hub", HOOK, f"{REPO}/res/l0")
    assert loaded.content_hash == found.content_hash
    torch.testing.assert_close(loaded.decoder(), sae.W_dec.detach())
    check_sae(loaded, model)
