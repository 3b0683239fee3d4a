"""Scoring an SAE at one cross-section against the ground truth there (docs/METHOD.md §6), and the two controls.

Everything happens in the cross-section's space through a `SectionCodes` (codes f, directions D, bias b; see
`sage_core.scoring.mapping`), so native, projected and control SAEs are scored by the same code:
- reconstruction: explained variance and L0 on the clean test prompts;
- sufficiency / necessity with the SAE's reconstruction in place of â: `a <- recon`, and `a <- ā + (e - E[e])` with
  the SAE's error e = a - recon centred over the test prompts. For the ground truth E[e] ≈ 0 and this is the design's
  `ā + (a - â)`; for an SAE whose reconstruction is not centred on the task mean (a bias fit on other text), the
  literal `ā + e` would also shift the activation by the constant E[e], and credit any SAE, even one whose codes are
  all zero, with the damage that shift alone does;
- sparse control: for each test pair (x, x') of each attribute, up to k greedy moves (remove a feature active on x,
  add one active on x') that bring a(x) closest to a(x'); edit accuracy against the ground-truth patch a <- a(x'), and
  edit magnitude (share of the reconstruction's weight removed, 0 = the supervised edit's share, 1 = all of it);
- interpretability: best F1 per attribute value of "feature active" against [attr = value]; mean and coverage >= 0.6
  (chance, an always-on feature, is 2p / (1 + p) for a value of share p: 0.667 for a balanced binary attribute, which
  clears the coverage threshold);
- alignment: best |cos| of each ground-truth vector with a mapped direction, and the Hungarian-matched mean (MCC).

Summary (one number per SAE, task and cross-section; the parts are always reported beside it): the mean of the
parts that say how well the SAE matches, reconstructs and controls the ground truth —
- faithfulness (LD_recon - LD_meanabl) / (LD_clean - LD_meanabl) and necessity, both clipped to [0, 1] and both only
  where mean ablation moves the logit difference by at least 10% (elsewhere they are noise);
- the edit gain at k = 4 over the no-intervention floor, (acc - floor) / (1 - floor) clipped, over attributes whose
  floor leaves room (< 0.9);
- the mean best F1 and the MCC.
Explained variance is reported but not in the summary: it is the proxy peers already report, and the ground truth
does not try to explain all of the variance (the oracle's EV is low by design).

Devices: everything runs where its inputs sit (the activations, codes and references the caller put on the model's
device); the metrics come back as Python floats, and `SectionReference.to` moves a reference (to the CPU before it is
written to disk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from sage_core.ground_truth.dictionaries import Dictionary
from sage_core.ground_truth.sections import (
    CleanSet,
    CrossSection,
    Intervention,
    PairSet,
    PrefixCache,
    final_logits_with,
    mean_ld,
    necessity,
    sufficiency,
)
from sage_core.model.capture import capture_batch
from sage_core.model.transformer import pad_sequences, real_mask
from sage_core.scoring.mapping import SectionCodes
from sage_core.scoring.metrics import (
    best_alignment,
    edit_magnitude,
    explained_variance,
    f1_scores,
    greedy_edits,
    mean_l0,
    summarise_f1,
)
from sage_core.scoring.rows import sufficiency_closeness

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer

FLOOR_ROOM = 0.9  # an attribute whose patch changes < 10% of predictions says nothing about editing
ABLATION_ROOM = 0.1  # a cross-section whose mean ablation moves LD by < 10% says nothing about faithfulness


class ScoreConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    ks: tuple[int, ...] = Field((1, 2, 4, 8), description="sparse-control budgets (moves per edit)")
    summary_k: int = Field(4, description="the budget whose edit gain enters the summary")
    random_width: int = Field(2, ge=1, description="random-decoder control: d_sae as a multiple of d, ± random "
                                                    "directions (the zoo's smallest width: more would align better)")
    random_k: int = Field(16, ge=1, description="random-decoder control: active features per prompt (the zoo's "
                                                "TopK k)")
    max_test: int = Field(128, ge=1, description="clean test prompts (and pairs per attribute) scored per "
                                                 "cross-section")
    seed: int = 0


class SectionReference(BaseModel):
    """What every SAE at one cross-section is judged against; computed once per cross-section."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    section: CrossSection
    dictionary: Dictionary
    ld_clean: float
    ld_meanabl: float
    patched_argmax: dict[str, Tensor]  # attribute -> (p,) argmax of the ground-truth patch a <- a(x')
    floor: dict[str, float]  # attribute -> no-intervention agreement with the patch
    supervised_share: dict[str, Tensor]  # attribute -> (p,) the supervised edit's share of â's weight
    background_mean: Tensor  # (d,) mean activation here over background text: the random control's bias

    def to(self, device: str | torch.device) -> SectionReference:
        """The same reference with every tensor (the dictionary's too) on `device`."""
        return self.model_copy(update={
            "dictionary": self.dictionary.to(device),
            "patched_argmax": {a: t.to(device) for a, t in self.patched_argmax.items()},
            "supervised_share": {a: t.to(device) for a, t in self.supervised_share.items()},
            "background_mean": self.background_mean.to(device)})


def _logits(model, tokens, positions, section, values, pad_id, prefixes: PrefixCache | None = None) -> Tensor:
    ivs = [] if values is None else [Intervention(section=section, positions=positions, values=values)]
    return final_logits_with(model, tokens, ivs, pad_id, prefixes=prefixes)


def reference(model: HookedTransformer, section: CrossSection, dic: Dictionary, clean: CleanSet,
              pairs: list[PairSet], pair_labels: dict[str, dict[str, list[str]]], pad_id: int,
              background_mean: Float[Tensor, " d"]) -> SectionReference:
    """`pair_labels[attr]` holds every attribute's value on the x side of `attr`'s pairs (for the edit magnitude);
    `background_mean` comes from `background_means`. Computed where `dic` and the sets sit; `.to("cpu")` the result
    before writing it."""
    mean = dic.mean.expand_as(clean.acts)
    ld_clean = mean_ld(_logits(model, clean.tokens, clean.positions, section, None, pad_id), clean.answer,
                       clean.competing)
    ld_meanabl = mean_ld(_logits(model, clean.tokens, clean.positions, section, mean, pad_id), clean.answer,
                         clean.competing)
    patched, floor, share = {}, {}, {}
    for ps in pairs:
        p = _logits(model, ps.tokens, ps.positions, section, ps.cf_acts, pad_id).argmax(-1)
        base = _logits(model, ps.tokens, ps.positions, section, None, pad_id).argmax(-1)
        patched[ps.attribute], floor[ps.attribute] = p, (base == p).float().mean().item()
        share[ps.attribute] = supervised_share(dic, ps.attribute, pair_labels[ps.attribute])
    return SectionReference(section=section, dictionary=dic, ld_clean=ld_clean, ld_meanabl=ld_meanabl,
                            patched_argmax=patched, floor=floor, supervised_share=share,
                            background_mean=background_mean.detach().to(torch.float32))


@torch.no_grad()
def background_means(model: HookedTransformer, tokens: list[list[int]], pad_id: int, sections: list[CrossSection],
                     batch_size: int = 64) -> dict[str, Float[Tensor, " d"]]:
    """Per cross-section label: the mean activation over every real token of background text (BOS and padding left
    out), sliced to the section's head. What any SAE trained on the model's text can know without the task. On the
    CPU (summed in float64 there from the captured float32 activations, whatever the model's device)."""
    hooks = sorted({s.hook for s in sections})
    sums: dict[str, np.ndarray] = {}
    n = 0
    for i in range(0, len(tokens), batch_size):
        t = pad_sequences(tokens[i : i + batch_size], pad_id)
        keep = real_mask(t, pad_id).numpy()
        keep[:, 0] = False
        acts = capture_batch(model, t, hooks)
        for h in hooks:
            sums[h] = sums.get(h, 0) + acts[h][keep].sum(0, dtype=np.float64)
        n += int(keep.sum())
    if n == 0:
        raise ValueError("no background tokens to average over; the corpus's held-out split is empty")
    out = {}
    for s in sections:
        m = sums[s.hook] / n
        out[s.label] = torch.as_tensor(m[s.head] if s.head is not None else m, dtype=torch.float32)
    return out


def supervised_share(dic: Dictionary, attribute: str, labels: dict[str, list[str]]) -> Tensor:
    """Per prompt: the weight the supervised edit removes, ‖w_i u_{i,v_i(x)}‖ / Σ_j ‖w_j u_{j,v_j(x)}‖ (the oracle
    reconstruction's weight; an unseen value weighs 0, and a prompt whose edited value is unseen gets NaN)."""
    def norm(a: str, v: str) -> float:
        return dic.vector(a, v).norm().item() if dic.has(a, v) else 0.0

    dev = dic.mean.device
    own = torch.tensor([norm(attribute, v) if dic.has(attribute, v) else float("nan") for v in labels[attribute]],
                       device=dev)
    total = torch.tensor([sum(norm(a, labels[a][i]) for a in dic.attributes) for i in range(len(own))], device=dev)
    return own / total.clamp_min(1e-12)


def oracle_codes(dic: Dictionary, labels: dict[str, list[str]]) -> SectionCodes:
    """The oracle SAE: its decoder is the ground-truth dictionary, its codes the prompts' own attribute values (with
    the dictionary's weights); an unseen value gets a zero code, as in `Dictionary.reconstruct`."""
    decoder, keys = dic.matrix()
    n = len(next(iter(labels.values())))
    codes = torch.zeros(n, len(keys))  # filled entry by entry: on the host, then moved in one copy
    col = {k: j for j, k in enumerate(keys)}
    for attr in dic.attributes:
        for i, v in enumerate(labels[attr]):
            if (attr, v) in col:
                codes[i, col[(attr, v)]] = 1.0
    return SectionCodes(codes=codes.to(decoder.device), decoder=decoder, bias=dic.mean)


def random_codes(acts: Float[Tensor, "n d"], mean: Float[Tensor, " d"], cfg: ScoreConfig) -> SectionCodes:
    """The random control: an SAE whose decoder is random, with the best codes such a decoder allows.

    Directions: w = random_width·d/2 seeded random unit vectors and their negatives (d_sae = random_width·d, codes
    non-negative). Codes: per prompt, the random_k directions with the largest |projection| of a - m, and their
    least-squares coefficients (the sign picks d or -d). Fitting the codes, instead of a tied encoder's raw
    projections (which overshoot and add noise that removing the reconstruction then "needs"), makes the control
    measure the decoder alone. Bias m: pass the background mean (`SectionReference.background_mean`): like a trained
    SAE's b_dec it knows the model's text but nothing of the task (the task mean ā is ground truth).

    Interpretability (F1) counts as active the same random_k features on every prompt (`SectionCodes.active`), not
    the ones the codes chose: choosing, per prompt, the random directions closest to the prompt makes a feature's
    activity track the prompt, not the decoder (on gendered_pronoun that gave a mean best F1 of 0.726, above most
    trained SAEs). With activity independent of the prompt, the control's best F1 for a value of share p is the chance
    level 2p / (1 + p) of an always-on detector, which any SAE with one dense feature also reaches."""
    n, d = acts.shape
    dev = acts.device
    g = torch.Generator().manual_seed(cfg.seed)
    w = max(1, cfg.random_width * d // 2)
    dirs = torch.randn(w, d, generator=g).to(dev)  # drawn on the CPU: the same directions on every device
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    x = (acts - mean.to(dev)).to(torch.float64)
    k = min(cfg.random_k, w, d)
    support = (x @ dirs.T.to(torch.float64)).abs().topk(k, dim=1).indices  # (n, k)
    ds = dirs.to(torch.float64)[support]  # (n, k, d)
    gram = ds @ ds.transpose(1, 2) + 1e-9 * torch.eye(k, dtype=torch.float64, device=dev)
    coef = torch.linalg.solve(gram, ds @ x[:, :, None]).squeeze(-1).to(torch.float32)  # (n, k)
    codes = torch.zeros(n, 2 * w, device=dev)
    rows = torch.arange(n, device=dev)[:, None]
    codes[rows, support] = coef.clamp_min(0)
    codes[rows, support + w] = (-coef).clamp_min(0)
    active = torch.zeros(n, 2 * w, dtype=torch.bool, device=dev)
    active[:, :k] = True  # fixed before seeing any prompt (the directions are random, so which ones does not matter)
    return SectionCodes(codes=codes, decoder=torch.cat([dirs, -dirs]), bias=mean.to(dev), active=active)


def score_section(
    model: HookedTransformer,
    ref: SectionReference,
    clean: CleanSet,
    pairs: list[PairSet],
    sc_clean: SectionCodes,
    sc_pairs: dict[str, tuple[SectionCodes, SectionCodes]],
    pad_id: int,
    cfg: ScoreConfig = ScoreConfig(),
    prefixes: PrefixCache | None = None,
) -> dict[str, float]:
    """Every metric of one mapped SAE at one cross-section; `sc_pairs[attr] = (codes on x, codes on x')`.
    `prefixes`: the model's kept prefixes (`final_logits_with`), where the caller scores several SAEs."""
    section, dic = ref.section, ref.dictionary
    out: dict[str, float] = {}
    recon = sc_clean.reconstruction()
    out["explained_variance"] = explained_variance(clean.acts, recon)
    out["l0"] = mean_l0(sc_clean.codes)

    # sufficiency and necessity in one batched pass: [a <- recon ; a <- ā + (e - E[e])] (module docstring)
    n = len(clean.tokens)
    err = clean.acts - recon
    both = torch.cat([recon, dic.mean.to(err.device) + (err - err.mean(0))])
    logits = _logits(model, clean.tokens * 2, clean.positions * 2, section, both, pad_id, prefixes)
    ld_recon = mean_ld(logits[:n], clean.answer, clean.competing)
    ld_int = mean_ld(logits[n:], clean.answer, clean.competing)
    out["sufficiency"] = sufficiency(ld_recon, ref.ld_clean)
    out["necessity"] = necessity(ref.ld_meanabl, ld_int, ref.ld_clean)
    room = abs(ref.ld_clean - ref.ld_meanabl) >= ABLATION_ROOM * abs(ref.ld_clean)
    out["faithfulness"] = (ld_recon - ref.ld_meanabl) / (ref.ld_clean - ref.ld_meanabl) if room else float("nan")
    out["necessity_in_summary"] = out["necessity"] if room else float("nan")

    # sparse control: every k of one attribute in one batched pass
    acc: dict[int, list[float]] = {k: [] for k in cfg.ks}
    gain: dict[int, list[float]] = {k: [] for k in cfg.ks}
    mag: dict[int, list[float]] = {k: [] for k in cfg.ks}
    for ps in pairs:
        if ps.attribute not in sc_pairs or ps.attribute not in ref.patched_argmax:
            continue
        cx, cxp = sc_pairs[ps.attribute]
        runs = greedy_edits(ps.acts, ps.cf_acts, cx.codes, cxp.codes, cx.decoder, cfg.ks)
        edited, removed = [e for e, _, _ in runs], [r for _, _, r in runs]
        norms = cx.decoder.to(torch.float64).norm(dim=1)  # once for every budget's edit magnitude
        p = len(ps.tokens)
        am = _logits(model, ps.tokens * len(cfg.ks), ps.positions * len(cfg.ks), section, torch.cat(edited),
                     pad_id, prefixes).argmax(-1)
        floor = ref.floor[ps.attribute]
        for j, k in enumerate(cfg.ks):
            a = (am[j * p:(j + 1) * p] == ref.patched_argmax[ps.attribute].to(am.device)).float().mean().item()
            acc[k].append(a)
            out[f"edit_accuracy_k{k}:{ps.attribute}"] = a
            if floor < FLOOR_ROOM:
                gain[k].append(float(np.clip((a - floor) / (1 - floor), 0, 1)))
            mag[k].append(edit_magnitude(removed[j], cx.codes, cx.decoder, ref.supervised_share[ps.attribute], norms))
        out[f"edit_floor:{ps.attribute}"] = floor
    for k in cfg.ks:
        out[f"edit_accuracy_k{k}"] = float(np.mean(acc[k])) if acc[k] else float("nan")
        out[f"edit_gain_k{k}"] = float(np.mean(gain[k])) if gain[k] else float("nan")
        out[f"edit_magnitude_k{k}"] = float(np.nanmean(mag[k])) if mag[k] and not np.all(np.isnan(mag[k])) \
            else float("nan")

    f1_rows = f1_scores(sc_clean.activity(), clean.labels)
    out.update(summarise_f1(f1_rows))
    for r in f1_rows:
        out[f"f1:{r['attribute']}={r['value']}"] = r["f1"]
    gt, _ = dic.matrix()
    al = best_alignment(gt, sc_clean.decoder)
    out["mcc"], out["mean_best_cos"] = al["mcc"], al["mean_best_cos"]
    out["summary"] = summary(out, cfg.summary_k)
    return out


def best_method(quality: pl.DataFrame) -> str:
    """The dictionary method an SAE is judged against: the one whose ground truth is truest at that cross-section
    (mean of 1 - |1 - sufficiency|, necessity and edit accuracy, over its attributes)."""
    q = quality.with_columns(
        sufficiency_closeness().clip(0, 1).alias("_s"), pl.col("necessity").clip(0, 1).alias("_n"),
        pl.col("edit_accuracy").fill_nan(None).alias("_e"))
    per = q.group_by("method").agg(pl.mean_horizontal(pl.col("_s").mean(), pl.col("_n").mean(),
                                                      pl.col("_e").mean()).alias("score"))
    # ties (equal scores, or none) go to the first method by name: identical runs judge against the same dictionary
    return per.sort(["score", "method"], descending=[True, False], nulls_last=True)["method"][0]


def summary(m: dict[str, float], k: int = 4) -> float:
    """The mean of the available parts (see the module docstring); NaN parts are left out, never counted as 0."""
    parts = [
        np.clip(m.get("faithfulness", np.nan), 0, 1),
        np.clip(m.get("necessity_in_summary", np.nan), 0, 1),
        m.get(f"edit_gain_k{k}", np.nan),
        m.get("f1_mean", np.nan),
        m.get("mcc", np.nan),
    ]
    parts = [p for p in parts if p is not None and np.isfinite(p)]
    return float(np.mean(parts)) if parts else float("nan")
