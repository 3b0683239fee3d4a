"""Loading a hub SAE while the hub is out of reach (issue 28 item 5): an SAE in SAELens' own layout is read from the
local Hugging Face cache by a per-call `hf_hub_download(local_files_only=True)`, with HF_HUB_OFFLINE left alone and
no connection tried; only a release that SAELens converts from other files still needs huggingface_hub's offline
switch, and the SAELens / huggingface_hub facts both paths rely on are checked here so that an upgrade that changes
them fails loudly."""

from __future__ import annotations

import inspect
import socket
import types

import pytest
import torch
from huggingface_hub import constants
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from storage.sae_hub import sae_files_hash
from storage.sae_sources import SAESpecError, load_sae_spec
from tests.acceptance.hf_cache import write_hub_files

REPO = "my-lab/saes"
RELEASE = "sage-offline-test"


class _FlagSpy(types.ModuleType):
    """huggingface_hub.constants with every write to HF_HUB_OFFLINE recorded (the process-wide switch)."""

    writes: list = []

    @property
    def HF_HUB_OFFLINE(self):  # noqa: N802 - the constant's own name
        return self.__dict__["HF_HUB_OFFLINE"]

    @HF_HUB_OFFLINE.setter
    def HF_HUB_OFFLINE(self, value):  # noqa: N802
        _FlagSpy.writes.append(value)
        self.__dict__["HF_HUB_OFFLINE"] = value  # where huggingface_hub's own functions read it (module globals)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An SAE in SAELens' layout in a local hub cache; HF_HUB_OFFLINE unset; the hub out of reach (the probe says
    so), every connection or name lookup recorded in `tried` and refused; writes to HF_HUB_OFFLINE recorded."""
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")))
    src = tmp_path / "saved"
    sae.save_model(src)
    write_hub_files(tmp_path / "hf", REPO, {f"l0/{f}": src / f for f in ("cfg.json", "sae_weights.safetensors")})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    tried = []

    def no_network(*a, **k):
        tried.append(a)
        raise OSError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr("storage.sae_hub._hub_unreachable", lambda *a, **k: "test")
    monkeypatch.setattr(constants, "__class__", _FlagSpy)
    _FlagSpy.writes = []
    yield sae, src, tried


def _register(monkeypatch, conversion_func=None):
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    monkeypatch.setitem(get_pretrained_saes_directory(), RELEASE, PretrainedSAELookup(
        release=RELEASE, repo_id=REPO, model="sage-test", conversion_func=conversion_func,
        saes_map={"layer0": "l0", "missing": "l9"}, expected_var_explained={}, expected_l0={}, neuronpedia_id={},
        norm_scaling_factor={}, config_overrides=None))


def test_a_cached_sae_loads_per_call_without_the_offline_switch(offline_hub, monkeypatch):
    sae, src, tried = offline_hub
    _register(monkeypatch)
    for spec in (f"hf:{REPO}:l0", f"{RELEASE}/layer0"):
        loaded = load_sae_spec(spec)
        torch.testing.assert_close(loaded.decoder(), sae.W_dec.detach())
        assert loaded.content_hash == sae_files_hash(src)
    assert _FlagSpy.writes == [], "the process-wide HF_HUB_OFFLINE switch was flipped"
    assert constants.HF_HUB_OFFLINE is False and tried == []


def test_an_uncached_sae_says_so_in_one_line_without_the_switch(offline_hub, monkeypatch):
    tried = offline_hub[2]
    _register(monkeypatch)
    for spec in (f"hf:{REPO}:nope", f"{RELEASE}/missing"):
        with pytest.raises(SAESpecError, match=r"could not be read from the local Hugging Face cache \(.*\) and the "
                                               r"hub .* is unreachable \(test\)") as e:
            load_sae_spec(spec)
        assert "\n" not in str(e.value)
    assert _FlagSpy.writes == [] and tried == []


def test_a_converted_release_still_needs_the_switch_and_gets_it_back(offline_hub, monkeypatch):
    """SAELens' other converters call hf_hub_download themselves, with no local_files_only to pass: offline they run
    under huggingface_hub's offline switch, set for the call only."""
    tried = offline_hub[2]
    _register(monkeypatch, conversion_func="gemma_2")
    with pytest.raises(SAESpecError, match=r"could not be read from the local Hugging Face cache"):
        load_sae_spec(f"{RELEASE}/missing")
    assert _FlagSpy.writes == [True, False] and constants.HF_HUB_OFFLINE is False and tried == []


def test_what_the_offline_paths_rely_on():
    """SAELens and huggingface_hub as `storage.sae_hub` uses them; if one of these fails after an upgrade, read
    `storage.sae_hub._from_pretrained` again (a `local_files_only` of SAE.from_pretrained itself would replace both
    paths)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import get_session
    from sae_lens.loading import pretrained_sae_loaders as loaders

    params = inspect.signature(SAE.from_pretrained).parameters
    assert "converter" in params and "local_files_only" not in params, \
        "SAE.from_pretrained changed: pass local_files_only=True per call if it takes it now"
    assert loaders.NAMED_PRETRAINED_SAE_LOADERS["sae_lens"] is loaders.sae_lens_huggingface_loader
    assert list(inspect.signature(loaders.sae_lens_huggingface_loader).parameters) == [
        "repo_id", "folder_name", "device", "force_download", "cfg_overrides"]
    assert {"path", "device", "cfg_overrides"} <= set(inspect.signature(
        loaders.get_sae_lens_config_from_disk).parameters)
    assert {"cfg_dict", "weight_path", "device"} <= set(inspect.signature(
        loaders.read_sae_components_from_disk).parameters)
    assert "local_files_only" in inspect.signature(hf_hub_download).parameters
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read by huggingface_hub's HTTP layer when each request is made
    try:
        with pytest.raises(OfflineModeIsEnabled):
            get_session().head("https://huggingface.co/")
    finally:
        constants.HF_HUB_OFFLINE = before
