"""Every compute stage on a GPU agrees with the same stage on the CPU (issue #17 item 1).

`run` computes each stage on one device of a tiny random model, placing its inputs as the tasks do (`tasks/`): model
training, capture, attribution, dictionary fits and their quality, section references, scoring (oracle, random
control, a projected pair of SAEs), core metrics and SAE training. Every stage gets the same inputs on both devices
(the model's weights are drawn on the CPU; activations and SAEs come from one CPU capture and one CPU training), so a
difference is that stage's own. Tolerances:
- float32 paths (forward passes, logits, AtP, metrics of them): rtol 1e-3, atol 1e-4;
- float64 paths (dictionary fits, write maps; stored as float32): rtol 1e-5, atol 1e-6;
- shares of argmax agreement or of active latents (edit accuracy, floors, edit gain, F1, coverage, the summary that
  contains them): atol 0.15, and counts of active latents (L0, dead share): atol 0.05, since a near-tie on one
  prompt or a latent at its threshold may fall the other way under float32 rounding (a share over 16 prompts moves
  by 1/16 per flip);
- SAE training: explained variance within 0.02 (a TopK choice that flips on one step changes the path, not the
  quality).
"""

from __future__ import annotations

import math

import pytest
import torch

from sage_core.ground_truth.dictionaries import fit
from sage_core.ground_truth.sections import CrossSection, build_sets, quality, split_rows
from sage_core.locate.attribution import all_components, atp_sweep, pairs_for, patch_effects
from sage_core.model.capture import capture_batch
from sage_core.model.transformer import ModelConfig, TrainConfig, build_model, pad_sequences, train_model
from sage_core.prompts.library import get_task
from sage_core.prompts.task import DatasetConfig, generate_prompts
from sage_core.scoring import mapping as mp
from sage_core.scoring.core import core_metrics
from sage_core.scoring.score import ScoreConfig, background_means, oracle_codes, random_codes, reference, score_section
from sage_core.zoo import train as zt
from sage_core.zoo.sae import wrap_sae

GPU = "cuda" if torch.cuda.is_available() else None
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU is None, reason="needs a CUDA GPU")]

CFG = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64, seed=3)
ROLES = ["IO", "S1", "S2", "END"]
ATTRS = ["IO", "S", "Pos"]
SECTION = CrossSection(hook="blocks.0.hook_attn_out", role="END")
BRACKET = ("blocks.0.hook_resid_mid", "blocks.0.hook_resid_pre")  # resid after / before the section's sub-layer
HOOKS = [*BRACKET, SECTION.hook]


def sae_spec(hook: str) -> zt.SAESpec:
    return zt.SAESpec(hook=hook, architecture="topk", d_sae=64, k=4, batch_size=16, epochs=1.0)


@pytest.fixture(scope="module")
def inputs(tokenizer):
    """What both devices start from: prompts, tokens, a CPU capture and two SAEs trained on the CPU."""
    df = generate_prompts(get_task("ioi"), DatasetConfig(task="ioi", n_train=48, n_test=16), tokenizer)
    tokens = pad_sequences(df["tokens"].to_list(), tokenizer.pad_token_id)
    pos = torch.as_tensor(df.select([f"pos_{r}" for r in ROLES]).to_numpy())
    acts = capture_batch(build_model(CFG, len(tokenizer)), tokens, HOOKS, pos)
    saes = {h: wrap_sae(zt.train_sae(sae_spec(h), torch.from_numpy(acts[h].reshape(-1, CFG.d_model)), "t"), name=h,
                        source="test") for h in BRACKET}
    return {"df": df, "tokens": tokens, "pos": pos, "acts": acts, "saes": saes, "pad": tokenizer.pad_token_id,
            "vocab": len(tokenizer)}


def run(device: str, inp: dict) -> dict:
    """Every stage once on `device`; returns CPU tensors and floats by name."""
    out: dict = {}
    df, tokens, acts, pad = inp["df"], inp["tokens"], inp["acts"], inp["pad"]
    model = build_model(CFG, inp["vocab"], device=device)  # drawn on the CPU: the same weights on both devices

    trained = build_model(CFG, inp["vocab"], device=device)
    out["train.losses"] = torch.tensor(train_model(trained, tokens, pad, TrainConfig(steps=5, batch_size=16, warmup=2)))

    got = capture_batch(model, tokens, HOOKS, inp["pos"])  # numpy on the host, whatever the model's device
    out.update({f"capture.{h}": torch.from_numpy(a) for h, a in got.items()})

    pairs, _ = pairs_for(df, "IO", split="train", limit=12)
    comps = all_components(model)
    scores, ld = atp_sweep(model, pairs, comps, pad, batch_size=5, ig_steps=2)
    out["atp.scores"], out["atp.ld_clean"], out["atp.ld_cf"] = scores, ld["ld_clean"], ld["ld_cf"]
    out["atp.patch"] = torch.tensor(patch_effects(model, pairs, [[(comps[0], 0)], [(comps[3], 1)]], pad, 5))

    # ground truth, as tasks/fit.py does: the test sets and the fit on the device, written from the CPU
    fit_acts, labels, clean, psets = build_sets(df, acts[SECTION.hook], SECTION, ATTRS, "test", device=device)
    for method in ("mean", "mse", "weighted"):
        dic = fit(fit_acts, labels, method).to("cpu")
        out[f"fit64.{method}.matrix"], out[f"fit64.{method}.mean"] = dic.matrix()[0], dic.mean
        for r in quality(model, dic.to(device), SECTION, clean, psets, pad):
            for k in ("sufficiency", "necessity", "ld_clean", "edit_accuracy", "no_intervention"):
                out[f"quality.{method}.{r['attribute']}.{k}"] = r[k]

    # references, as tasks/score.py does: computed on the device, kept on the CPU, moved back for scoring
    rows = split_rows(df, ATTRS, "test")
    pair_labels = {p.attribute: {a: df[f"attr_{a}"].gather(p.x).to_list() for a in ATTRS} for p in rows.pairs}
    bg = background_means(model, df["tokens"].to_list()[:32], pad, [SECTION])[SECTION.label]
    ref = reference(model, SECTION, fit(fit_acts, labels, "mse"), clean, psets, pair_labels, pad, bg).to("cpu")
    out["ref.ld_clean"], out["ref.ld_meanabl"], out["ref.bg"] = ref.ld_clean, ref.ld_meanabl, ref.background_mean
    ref = ref.to(device)

    # the CPU-trained SAEs moved to the device (`LoadedSAE.to`), mapped by projection (the write map in float64)
    q = mp.write_map(model, SECTION, "projection")
    out["fit64.write_map"] = q.cpu()
    role = ROLES.index(SECTION.role)
    parts = []
    for h in BRACKET:
        sae = inp["saes"][h].to(device)
        dec, bias = mp.affine_decoder(sae)
        out[f"affine.{h}.dec"], out[f"affine.{h}.bias"] = dec.cpu(), bias.cpu()
        parts.append((sae.encode(torch.tensor(acts[h][:, role], device=device)), dec, bias))
        core = core_metrics(model, h, sae.encode, sae.decode, sae.d_sae, tokens[:20], pad, batch_size=7)
        out.update({f"core.{h}.{k}": v for k, v in core.items()})
        # training on the device: the SAE comes back on the CPU, as good as one trained there
        x = torch.from_numpy(acts[h].reshape(-1, CFG.d_model))
        fresh = zt.train_sae(sae_spec(h), x, "t", device=device)
        assert fresh.W_dec.device.type == "cpu" and fresh.cfg.device == "cpu"
        out[f"sae.{h}.ev"] = zt.reconstruction_metrics(fresh, x)["explained_variance"]

    # scoring, as tasks/score.py does: every input on the device
    a = torch.tensor(acts[SECTION.hook][:, role], device=device)
    cfg = ScoreConfig(ks=(1, 4))
    all_labels = {k: df[f"attr_{k}"].to_list() for k in ATTRS}
    units = {"oracle": oracle_codes(ref.dictionary, all_labels), "random": random_codes(a, ref.background_mean, cfg),
             "projected": mp.projected(parts[0], parts[1], q)}
    for name, codes in units.items():
        sc_pairs = {p.attribute: (codes.rows(p.x), codes.rows(p.xp)) for p in rows.pairs}
        metrics = score_section(model, ref, clean, psets, codes.rows(rows.clean), sc_pairs, pad, cfg)
        out.update({f"score.{name}.{k}": v for k, v in metrics.items()})
    return out


@pytest.fixture(scope="module")
def results(inputs):
    return run("cpu", inputs), run(GPU, inputs)


def tolerance(key: str) -> tuple[float, float]:
    """(rtol, atol) for one result; see the module docstring."""
    name = key.rsplit(".", 1)[-1]
    if key.startswith("sae.") and key.endswith(".ev"):
        return 0.0, 0.02
    if any(s in name for s in ("edit_", "floor", "no_intervention", "summary", "f1", "coverage")):
        return 0.0, 0.15
    if any(s in name for s in ("l0", "dead_share")):
        return 0.0, 0.05
    if key.startswith("fit64."):
        return 1e-5, 1e-6
    return 1e-3, 1e-4


def test_every_stage_agrees_across_devices(results):
    cpu, gpu = results
    assert cpu.keys() == gpu.keys()
    bad = []
    for key, a in cpu.items():
        b, (rtol, atol) = gpu[key], tolerance(key)
        if isinstance(a, torch.Tensor):
            assert b.device.type == "cpu", f"{key}: results come back to the CPU"
            ok = torch.allclose(b.double(), a.double(), rtol=rtol, atol=atol, equal_nan=True)
        else:
            ok = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol + rtol * abs(a)
        if not ok:
            bad.append(f"{key}: cpu {a} vs gpu {b}")
    assert not bad, "\n".join(bad)


def test_the_stages_measured_something(results):
    """Guards the comparison against comparing nothing: each stage produced non-trivial numbers."""
    cpu, _ = results
    for prefix in ("train.", "capture.", "atp.", "fit64.", "quality.", "ref.", "affine.", "core.", "sae.", "score."):
        assert any(k.startswith(prefix) for k in cpu), prefix
    assert cpu["atp.scores"].abs().sum() > 0 and cpu["fit64.mse.matrix"].abs().sum() > 0
    assert math.isfinite(cpu["score.projected.explained_variance"])
