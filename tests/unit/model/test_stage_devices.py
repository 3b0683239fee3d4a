"""Every stage runs on a given device (issue #17 item 1). Here, without a GPU: asking for the CPU explicitly gives
exactly what the default gives, the device copies (`LoadedSAE.to`, `Dictionary.to`, `SectionReference.to`) move every
tensor and leave the original alone (checked on torch's "meta" device, which every build has), and what is written to
disk is a CPU model whatever device it ran on. tests/gpu/test_device_stages.py compares a GPU with the CPU."""

from __future__ import annotations

import torch

from sage_core.ground_truth.dictionaries import Dictionary
from sage_core.ground_truth.sections import CrossSection, build_sets
from sage_core.locate.attribution import PairBatch
from sage_core.model.transformer import ModelConfig, build_model
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts
from sage_core.scoring.mapping import _unit_rows, affine_decoder
from sage_core.scoring.score import SectionReference
from sage_core.zoo.sae import wrap_sae
from sage_core.zoo.train import SAESpec, build_training_sae, train_sae

TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32, seed=4)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_built_for_the_cpu_is_the_default_model():
    a, b = build_model(TINY, 20), build_model(TINY, 20, device="cpu")
    assert _same_state(a.state_dict(), b.state_dict()) and b.cfg.device == "cpu"


def test_an_sae_trained_on_the_cpu_by_name_is_the_default_sae():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(256, 16, generator=g)
    spec = SAESpec(hook="blocks.0.hook_resid_post", d_sae=32, k=4, batch_size=64, epochs=1.0)
    a, b = train_sae(spec, acts, "t"), train_sae(spec, acts, "t", device="cpu")
    assert _same_state(a.state_dict(), b.state_dict())
    assert b.cfg.device == "cpu" and b.W_dec.device.type == "cpu"  # saved as it comes back: a CPU SAE
    # the initial weights are drawn on the CPU, then moved: the same seed gives the same start on every device
    meta = build_training_sae(spec, 16, "t", device="meta")
    assert meta.W_dec.device.type == "meta" and meta.cfg.device == "meta"


def test_test_sets_built_for_the_cpu_are_the_default_sets(tokenizer):
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=8, n_test=8), tokenizer)
    acts = torch.randn(len(df), 4, 6, generator=torch.Generator().manual_seed(1)).numpy()
    section = CrossSection(hook="blocks.0.hook_resid_post", role="END")
    a = build_sets(df, acts, section, ["IO", "S"], "test")
    b = build_sets(df, acts, section, ["IO", "S"], "test", device="cpu")
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    for x, y in ((a[2].acts, b[2].acts), (a[2].answer, b[2].answer), (a[3][0].cf_acts, b[3][0].cf_acts)):
        assert torch.equal(x, y) and y.device.type == "cpu"
    meta = build_sets(df, acts, section, ["IO", "S"], "test", device="meta")
    assert {meta[0].device.type, meta[2].acts.device.type, meta[2].competing.device.type,
            meta[3][0].acts.device.type} == {"meta"}


def test_pair_batches_for_the_cpu_are_the_default_batches():
    pb = PairBatch(clean=[[1, 2, 3], [1, 4]], cf=[[1, 5, 3], [1, 6]], answer=[3, 4], target=[5, 6],
                   positions=[[1], [1]], cf_positions=[[1], [1]])
    for a, b, m in zip(pb.batches(1, 0), pb.batches(1, 0, "cpu"), pb.batches(1, 0, "meta"), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert {t.device.type for t in m} == {"meta"}


class ClosureSAE(torch.nn.Module):
    """An SAE that keeps a closure over itself as an attribute, as SAELens' run-time normalisation does."""

    def __init__(self):
        super().__init__()
        self.W_dec = torch.nn.Parameter(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)))
        self.hook_name = "blocks.0.hook_resid_post"

        def scale(x):
            self.last = x.shape[0]  # per-call state, written on whichever object the closure names
            return x

        self.scale = scale

    def encode(self, x):
        return torch.relu(self.scale(x) @ self.W_dec.T)

    def decode(self, f):
        return f @ self.W_dec


def test_a_loaded_sae_moves_as_a_copy_and_stays_on_the_cpu_for_the_cpu():
    cpu = wrap_sae(ClosureSAE(), name="c", source="test")
    assert cpu.to("cpu") is cpu and cpu.device.type == "cpu"
    moved = cpu.to("meta")
    assert moved is not cpu and moved.device.type == "meta" and moved.content_hash == cpu.content_hash
    assert cpu.sae.W_dec.device.type == "cpu"  # the original, shared by other threads, is untouched
    moved.sae.scale(torch.zeros(3, 4))
    assert moved.sae.last == 3 and not hasattr(cpu.sae, "last")  # the copy's closure names the copy


def test_an_sae_that_cannot_move_stays_and_still_encodes_inputs_from_anywhere():
    class Plain:
        hook_name = "blocks.0.hook_resid_post"
        W_dec = torch.eye(3)

        def encode(self, x):
            return x.clone()

        def decode(self, f):
            return f.clone()

    s = wrap_sae(Plain(), name="p", source="test")
    assert s.to("meta") is s
    dirs, bias = affine_decoder(s)
    assert torch.equal(dirs, torch.eye(3)) and torch.equal(bias, torch.zeros(3))


def test_unit_rows_are_rows_of_the_identity():
    for start, stop, n in ((0, 3, 3), (2, 5, 7), (4096, 5000, 5000)):
        assert torch.equal(_unit_rows(start, stop, n, torch.device("cpu")), torch.eye(n)[start:stop])


def _dictionary() -> Dictionary:
    return Dictionary(method="mean", mean=torch.zeros(3), weights={"a": 1.0},
                      vectors={"a": {"x": torch.ones(3), "y": -torch.ones(3)}})


def test_dictionaries_and_references_move_every_tensor():
    dic = _dictionary()
    same = dic.to("cpu")
    assert torch.equal(same.mean, dic.mean) and torch.equal(same.vectors["a"]["y"], dic.vectors["a"]["y"])
    ref = SectionReference(section=CrossSection(hook="blocks.0.hook_resid_post", role="END"), dictionary=dic,
                           ld_clean=1.0, ld_meanabl=0.5, patched_argmax={"a": torch.tensor([1, 2])},
                           floor={"a": 0.5}, supervised_share={"a": torch.tensor([0.5, 0.25])},
                           background_mean=torch.ones(3))
    moved = ref.to("meta")
    tensors = [moved.dictionary.mean, *moved.dictionary.vectors["a"].values(), moved.patched_argmax["a"],
               moved.supervised_share["a"], moved.background_mean]
    assert {t.device.type for t in tensors} == {"meta"}
    assert ref.background_mean.device.type == "cpu" and dic.mean.device.type == "cpu"  # originals untouched
    assert moved.floor == ref.floor and moved.ld_clean == ref.ld_clean


def test_a_model_is_saved_as_a_cpu_model_whatever_device_it_ran_on():
    from storage.zoo import _config_dict

    model = build_model(TINY, 20)
    model.cfg.device = "cuda:3"  # what TransformerLens' `to` leaves in the config of a model moved to a GPU
    assert _config_dict(model.cfg)["device"] == "cpu"
    assert model.cfg.device == "cuda:3"  # the live config is not written into


def test_a_saelens_sae_copy_normalises_with_its_own_state():
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=8, normalize_activations="constant_norm_rescale",
                                        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post")))
    moved = wrap_sae(sae, name="s", source="test").to("meta").sae
    cells = [c.cell_contents for c in moved.run_time_activation_norm_fn_in.__closure__]
    assert moved in cells and sae not in cells  # SAELens' closure over `self` now names the copy
    assert moved.cfg.device == "meta" and sae.cfg.device == "cpu"
