"""Scoring an SAE at a cross-section (docs/METHOD.md §6): pure tensor maths, no I/O.

- reconstruction: explained variance, mean L0;
- interpretability: feature active (f > 0) vs indicator [attr = v] -> precision, recall, F1; best feature per value;
- sparse control: greedy edit x -> x' with up to k remove/add moves, and the normalised edit magnitude;
- alignment: best |cos| per ground-truth vector and the Hungarian-matched mean (MCC).
Sufficiency and necessity live in sage_core.ground_truth.sections (`sufficiency`, `necessity`).
Every function computes on its inputs' device (float64 where it sums or compares) and returns Python floats, or
tensors on that device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

COVERAGE_THRESHOLD = 0.6

_F64 = torch.float64


def explained_variance(acts: Float[Tensor, "n d"], recon: Float[Tensor, "n d"]) -> float:
    """EV = 1 - Σ‖a - â‖² / Σ‖a - ā‖² (ā = mean over n); nan when the activations have ~no variance."""
    a, r = acts.to(_F64), recon.to(_F64)
    num = ((a - r) ** 2).sum()
    den = ((a - a.mean(0, keepdim=True)) ** 2).sum()
    # relative to the activations' scale: a constant signal leaves only rounding noise in `den`
    if a.numel() == 0 or float(den) <= 1e-12 * max(float((a**2).sum()), 1e-300):
        return math.nan
    return float(1.0 - num / den)


def mean_l0(codes: Float[Tensor, "n m"]) -> float:
    """L0 = mean over rows of #{j : codes[j] != 0}."""
    if codes.shape[0] == 0:
        return math.nan
    return float((codes != 0).sum(1).to(_F64).mean())


def f1_scores(active: Bool[Tensor, "n m"], labels: dict[str, list[str]]) -> list[dict]:
    """Best feature per (attribute, value): feature j predicts [attr = v] when active.

    TP = Yᵀ A (Y: n×V value indicators, A: n×m activity), precision = TP / #active_j, recall = TP / support_v,
    F1 = 2 TP / (#active_j + support_v) (= harmonic mean; 0 when TP = 0). Values in sorted order; ties -> lowest j.
    """
    n, m = active.shape
    act = active.to(_F64)
    n_active = act.sum(0)  # (m,) predicted positives per feature
    out: list[dict] = []
    for attr, vals in labels.items():
        if len(vals) != n:
            raise ValueError(f"labels[{attr!r}] has {len(vals)} entries, expected {n}")
        values = sorted(set(vals))
        index = {v: i for i, v in enumerate(values)}
        codes = torch.as_tensor([index[v] for v in vals], dtype=torch.long, device=act.device)
        ind = torch.zeros(n, len(values), dtype=_F64, device=act.device)
        ind[torch.arange(n, device=act.device), codes] = 1.0
        support = ind.sum(0)  # (V,)
        tp = ind.T @ act  # (V, m)
        denom = n_active[None, :] + support[:, None]
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
        precision = torch.where(n_active[None, :] > 0, tp / n_active.clamp_min(1)[None, :], torch.zeros_like(tp))
        recall = tp / support.clamp_min(1)[:, None]
        for i, v in enumerate(values):
            if m == 0:
                best, f, p, r = -1, 0.0, 0.0, 0.0
            else:
                best = int(torch.argmax(f1[i]))  # first maximum -> lowest index on ties
                f, p, r = float(f1[i, best]), float(precision[i, best]), float(recall[i, best])
            out.append(
                {
                    "attribute": attr,
                    "value": v,
                    "best_feature": best,
                    "f1": f,
                    "precision": p,
                    "recall": r,
                    "support": int(support[i]),
                }
            )
    return out


def interpretability(active: Bool[Tensor, "n m"], labels: dict[str, list[str]]) -> dict[str, float]:
    """f1_<attr> = mean over the attribute's values of the best F1; f1_mean = mean of those over attributes;
    coverage = share of all (attribute, value) whose best F1 >= 0.6."""
    return summarise_f1(f1_scores(active, labels))


def summarise_f1(rows: list[dict]) -> dict[str, float]:
    """`interpretability` from already computed `f1_scores` rows."""
    per_attr: dict[str, list[float]] = {}
    for r in rows:
        per_attr.setdefault(r["attribute"], []).append(r["f1"])
    means = {a: float(np.mean(f)) for a, f in per_attr.items()}
    out = {
        "f1_mean": float(np.mean(list(means.values()))) if means else math.nan,
        "coverage": float(np.mean([r["f1"] >= COVERAGE_THRESHOLD for r in rows])) if rows else math.nan,
    }
    out.update({f"f1_{a}": v for a, v in means.items()})
    return out


def greedy_edit(
    base: Float[Tensor, "p d"],
    target: Float[Tensor, "p d"],
    codes_x: Float[Tensor, "p m"],
    codes_xp: Float[Tensor, "p m"],
    decoder: Float[Tensor, "m d"],
    k: int,
) -> tuple[Float[Tensor, "p d"], Int[Tensor, " p"], Float[Tensor, " p"]]:
    """Greedy sparse edit of each row from e = base towards target with at most k moves, each used once.

    Moves: remove j (v = -codes_x[j]·D_j, when codes_x[j] > 0) and add j (v = +codes_xp[j]·D_j, when codes_xp[j] > 0).
    Each step applies argmin_v ‖e + v - t‖² = ‖e - t‖² + 2⟨e - t, v⟩ + ‖v‖², only if it strictly decreases the distance
    (ties -> removes before adds, lower j first). Returns (edited e, moves used, removed weight Σ_removed codes_x[j]‖D_j‖).
    """
    return greedy_edits(base, target, codes_x, codes_xp, decoder, (k,))[0]


def greedy_edits(
    base: Float[Tensor, "p d"],
    target: Float[Tensor, "p d"],
    codes_x: Float[Tensor, "p m"],
    codes_xp: Float[Tensor, "p m"],
    decoder: Float[Tensor, "m d"],
    ks: Sequence[int],
) -> list[tuple[Float[Tensor, "p d"], Int[Tensor, " p"], Float[Tensor, " p"]]]:
    """`greedy_edit` at every budget in `ks`, in one greedy run to the largest: the first k steps of a run are the
    whole run with budget k, so each budget's result is the state after its k-th step."""
    p, m = codes_x.shape
    e = base.to(_F64).clone()
    t = target.to(_F64)
    cx, cxp, dec = codes_x.to(_F64), codes_xp.to(_F64), decoder.to(_F64)
    dec_norm = dec.norm(dim=1)  # (m,)
    coef = torch.cat([-cx, cxp], dim=1)  # (p, 2m): move j is coef[:, j] * D[j mod m]
    sq_norm = coef**2 * torch.cat([dec_norm, dec_norm]) ** 2  # ‖v‖² per move
    avail = torch.cat([cx > 0, cxp > 0], dim=1)
    n_moves = torch.zeros(p, dtype=torch.long, device=e.device)
    removed = torch.zeros(p, dtype=_F64, device=e.device)
    rows = torch.arange(p, device=e.device)
    budgets = {max(k, 0) for k in ks}
    at: dict[int, tuple] = {}

    def snapshot() -> tuple:  # copies: `removed` and `n_moves` change in place
        return e.to(base.dtype, copy=True), n_moves.clone(), removed.to(base.dtype, copy=True)

    for step in range(max(budgets, default=0)):
        if step in budgets:
            at[step] = snapshot()
        if not bool(avail.any()):
            break
        proj = (e - t) @ dec.T  # (p, m) ⟨e - t, D_j⟩
        delta = 2 * coef * torch.cat([proj, proj], dim=1) + sq_norm  # change of ‖e - t‖²
        delta = torch.where(avail, delta, torch.full_like(delta, math.inf))
        best_delta, best = delta.min(dim=1)  # first minimum -> removes, then lower j
        go = best_delta < 0
        if not bool(go.any()):
            break  # no row can improve; e no longer changes
        feat = best % m
        step_size = torch.where(go, coef[rows, best], torch.zeros_like(best_delta))
        e = e + step_size[:, None] * dec[feat]
        avail[rows[go], best[go]] = False
        n_moves += go.long()
        is_remove = go & (best < m)
        removed += torch.where(is_remove, cx[rows, feat] * dec_norm[feat], torch.zeros_like(removed))
    last = snapshot()  # the largest budget's, and every budget the run stopped short of
    return [at.get(max(k, 0), last) for k in ks]


def edit_magnitude(
    removed_weight: Float[Tensor, " p"],
    codes_x: Float[Tensor, "p m"],
    decoder: Float[Tensor, "m d"],
    supervised_share: float | Tensor,
    decoder_norm: Float[Tensor, " m"] | None = None,
) -> float:
    """Normalised share of the reconstruction's weight an edit removes, averaged over rows. `decoder_norm`: the
    decoder rows' float64 norms where the caller has them (one per SAE and attribute, not per budget: on a
    24576-wide SAE they cost more than the rest).

    s = removed_weight / Σ_j codes_x[j]·‖D_j‖ (positive codes), magnitude = (s - s_sup) / (1 - s_sup):
    0 = the supervised edit's share s_sup, 1 = removing the whole reconstruction. Rows with zero total weight (or
    s_sup = 1) are skipped; nan when no row is left.
    """
    norms = decoder.to(_F64).norm(dim=1) if decoder_norm is None else decoder_norm.to(_F64)
    total = codes_x.to(_F64).clamp_min(0) @ norms  # (p,)
    s_sup = torch.as_tensor(supervised_share, dtype=_F64, device=total.device).expand_as(total)
    keep = (total > 0) & (1 - s_sup > 1e-12)
    if not bool(keep.any()):
        return math.nan
    s = removed_weight.to(_F64)[keep] / total[keep]
    return float(((s - s_sup[keep]) / (1 - s_sup[keep])).mean())


def best_alignment(gt: Float[Tensor, "k d"], directions: Float[Tensor, "m d"]) -> dict:
    """C = |cos(gt_i, dir_j)| (zero-norm rows -> 0). best_cos_i = max_j C_ij (float64), best_feature_i = argmax;
    mcc = mean C over a maximum-weight one-to-one matching (Hungarian), i.e. over min(k, m) pairs."""
    g, dr = gt.to(_F64), directions.to(gt.device, _F64)
    gn = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)  # zero rows stay zero
    dn = dr / dr.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (gn @ dn.T).abs()  # (k, m)
    if cos.numel() == 0:
        return {
            "best_cos": torch.zeros(g.shape[0], dtype=_F64, device=g.device),
            "best_feature": torch.full((g.shape[0],), -1, dtype=torch.long, device=g.device),
            "mean_best_cos": math.nan,
            "mcc": math.nan,
        }
    best_cos, best_feature = cos.max(dim=1)
    c = cos.cpu().numpy()  # the Hungarian matching is scipy's, on the host
    r, col = linear_sum_assignment(-c)
    return {
        "best_cos": best_cos,
        "best_feature": best_feature,
        "mean_best_cos": float(best_cos.mean()),
        "mcc": float(c[r, col].mean()),
    }
