"""Every compute task takes a device spec as its last parameter, "cpu" by default (issue #17 item 1); the scoring
tasks read an SAE and a task's references from disk once (on the CPU) and keep their device copies as "moved", which
the CPU never asks for."""

from __future__ import annotations

import inspect

import pytest
import torch

from sage_core.ground_truth.dictionaries import Dictionary
from sage_core.ground_truth.sections import CrossSection
from sage_core.scoring.score import SectionReference
from sage_core.zoo.sae import wrap_sae
from storage.home import SageHome
from storage.refs import ReferencesRef, SAERef
from tasks import capture, fit, loaded, locate, score, zoo

COMPUTE_TASKS = [zoo.train_model, zoo.evaluate_model, zoo.capture_sae_activations, zoo.train_sae, zoo.evaluate_saes,
                 zoo.import_model, locate.locate_one, fit.fit_section, score.section_references, score.score_sae,
                 capture.capture_shard]


@pytest.mark.parametrize("t", COMPUTE_TASKS, ids=lambda t: t.name)
def test_each_compute_task_takes_a_device_last_defaulting_to_the_cpu(t):
    last = list(inspect.signature(t.fn).parameters.values())[-1]
    assert (last.name, last.default, last.annotation) == ("device", "cpu", "str")


@pytest.fixture
def moved(monkeypatch):
    """`loaded.once` with a "moved" kind of its own (whether or not tasks.loaded has one): records what is asked."""
    kept: dict[tuple, object] = {}
    asked: list[tuple] = []
    real = loaded.once

    def once(kind, key, load):
        if kind != "moved":
            return real(kind, key, load)
        asked.append(key)
        if key not in kept:
            kept[key] = load()
        return kept[key]

    monkeypatch.setattr(loaded, "once", once)
    loaded.clear()
    yield asked
    loaded.clear()


class TinySAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W_dec = torch.nn.Parameter(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
        self.hook_name = "blocks.0.hook_resid_post"

    def encode(self, x):
        return torch.relu(x @ self.W_dec.T)

    def decode(self, f):
        return f @ self.W_dec


def test_an_sae_is_read_once_and_its_device_copy_made_once(tmp_path, monkeypatch, moved):
    sae = wrap_sae(TinySAE(), name="tiny", source="test")
    reads = []
    monkeypatch.setattr(score, "load_sae_spec", lambda spec, h, name: reads.append(spec) or sae)
    ref = SAERef(spec="tiny", name="tiny", hook=sae.hook, hash=sae.content_hash, arch="custom", d_sae=6, d_in=4,
                 source="test")
    h = SageHome(tmp_path)
    assert score.loaded_sae(h, ref, None) is score.loaded_sae(h, ref, None, "cpu") is sae
    assert moved == []  # the CPU is served by the instance read from disk: no copy, no "moved" entry
    on_meta = score.loaded_sae(h, ref, None, "meta")
    assert on_meta is score.loaded_sae(h, ref, None, "meta") and on_meta.device.type == "meta"
    assert moved[0] == ("sae", ref.hash, ref.spec, "meta") and reads == ["tiny"]  # one disk read in all
    assert sae.device.type == "cpu"


def test_references_are_read_once_and_moved_once(tmp_path, monkeypatch, moved):
    dic = Dictionary(method="mean", mean=torch.zeros(3), weights={"a": 1.0}, vectors={"a": {"x": torch.ones(3)}})
    refs = [SectionReference(section=CrossSection(hook="blocks.0.hook_resid_post", role="END"), dictionary=dic,
                             ld_clean=1.0, ld_meanabl=0.0, patched_argmax={"a": torch.tensor([1])}, floor={"a": 0.0},
                             supervised_share={"a": torch.tensor([1.0])}, background_mean=torch.zeros(3))]
    reads = []
    monkeypatch.setattr(score.sc_store, "load_references", lambda d: reads.append(d) or refs)
    ref = ReferencesRef(path="scores/references/k", hash="k", task="ioi")
    h = SageHome(tmp_path)
    assert score.loaded_references(h, ref) is score.loaded_references(h, ref, "cpu") is refs and moved == []
    on_meta = score.loaded_references(h, ref, "meta")
    assert on_meta is score.loaded_references(h, ref, "meta")
    assert on_meta[0].dictionary.mean.device.type == "meta" and refs[0].dictionary.mean.device.type == "cpu"
    assert moved == [("references", "k", "meta")] * 2 and len(reads) == 1
