"""Location search: attribution patching (AtP) of every component at every role position, its selection, and its
validation by real activation patching.

AtP_i(c, r) = mean over pairs (x, x') of <a_c,p'(x') - a_c,p(x), dLD(x)/da_c,p>, with p the position of role r in x
and p' its position in x', LD(x) = logit(answer(x)) - logit(target), target = `pair_target_token`. The patch is
role-aligned, as the ground truth's is (sage_core.ground_truth.sections): where the counterfactual moves a role (IOI's Pos: the
names trade places, p' != p), x' 's activation is taken where that role sits in x', not at x's token index. All components come from one sweep per batch: a forward pass on x'
(no grad), a forward pass on x that keeps the activations, and one backward pass.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from sage_core.locate.config import RESID_KINDS, SUBLAYER_KINDS, LocateConfig
from sage_core.model.devices import model_device
from sage_core.model.transformer import pad_sequences

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer


class LocateError(ValueError):
    """The location search cannot run as asked; the message says what to fix."""


@dataclass(frozen=True)
class Component:
    """One place in the model: a hook, optionally one head of it."""

    kind: str  # head | attn_out | mlp_out | resid_pre | resid_post
    layer: int
    head: int | None = None

    @property
    def hook(self) -> str:
        return {
            "head": f"blocks.{self.layer}.attn.hook_z",
            "attn_out": f"blocks.{self.layer}.hook_attn_out",
            "mlp_out": f"blocks.{self.layer}.hook_mlp_out",
            "resid_pre": f"blocks.{self.layer}.hook_resid_pre",
            "resid_post": f"blocks.{self.layer}.hook_resid_post",
        }[self.kind]

    @property
    def group(self) -> str:
        return "residual" if self.kind in RESID_KINDS else "sublayer"

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer}.{self.kind}"


def all_components(model: HookedTransformer, kinds: Sequence[str] | None = None) -> list[Component]:
    """Every head, attn_out, mlp_out, resid_pre and resid_post of every layer (optionally only some kinds)."""
    kinds = tuple(kinds) if kinds is not None else (*SUBLAYER_KINDS, *RESID_KINDS)
    unknown = set(kinds) - set(SUBLAYER_KINDS + RESID_KINDS)
    if unknown:
        raise LocateError(f"unknown component kinds {sorted(unknown)}; use {SUBLAYER_KINDS + RESID_KINDS}")
    out = []
    for layer in range(model.cfg.n_layers):
        for kind in kinds:
            if kind == "head":
                out += [Component("head", layer, h) for h in range(model.cfg.n_heads)]
            else:
                out.append(Component(kind, layer))
    if not out:
        raise LocateError("the component filter matches nothing; widen it")
    return out


class PairBatch(BaseModel):
    """Aligned clean/counterfactual prompts of one attribute (same token length per pair)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    clean: list[list[int]]
    cf: list[list[int]]
    answer: list[int]
    target: list[int]
    positions: list[list[int]] = Field(description="per pair, the token position of each role (of the clean prompt)")
    cf_positions: list[list[int]] | None = Field(
        None, description="per pair, the token position of each role in the counterfactual (where x' 's activation "
                          "is read); None = the clean positions, for position-aligned sweeps over every token")

    def batches(self, batch_size: int, pad_id: int, device: torch.device | str = "cpu"):
        """Padded tensors per batch, on `device` (the model's): clean tokens, cf tokens, last position, answer,
        target, role positions in x, role positions in x'."""
        cf_positions = self.cf_positions if self.cf_positions is not None else self.positions
        if len(cf_positions) != len(self.positions) or any(
                len(a) != len(b) for a, b in zip(cf_positions, self.positions, strict=True)):
            raise LocateError("cf_positions must give one position per role per pair, like positions; set it to None "
                              "when the counterfactual's positions are the clean ones")
        for i in range(0, len(self.clean), batch_size):
            sl = slice(i, i + batch_size)
            yield (pad_sequences(self.clean[sl], pad_id).to(device), pad_sequences(self.cf[sl], pad_id).to(device),
                   torch.as_tensor([len(s) - 1 for s in self.clean[sl]], device=device),
                   torch.as_tensor(self.answer[sl], device=device), torch.as_tensor(self.target[sl], device=device),
                   torch.as_tensor(self.positions[sl], device=device), torch.as_tensor(cf_positions[sl], device=device))


def logit_diff(logits: Tensor, last: Tensor, answer: Tensor, target: Tensor) -> Float[Tensor, " b"]:
    dev = logits.device
    final = logits[torch.arange(len(last), device=dev), last.to(dev)]
    return final.gather(1, answer.to(dev)[:, None]).squeeze(1) - final.gather(1, target.to(dev)[:, None]).squeeze(1)


def atp_sweep(
    model: HookedTransformer,
    pairs: PairBatch,
    components: list[Component],
    pad_id: int,
    batch_size: int = 64,
    ig_steps: int = 1,
) -> tuple[Float[Tensor, "comp role"], dict[str, float]]:
    """AtP of every component at every role position, averaged over pairs.

    `ig_steps` > 1 averages the gradient over that many points on the straight line between the embeddings of x and
    x' (AtP with integrated gradients, as in EAP-IG): more faithful where a swap of tokens is far from linear, at
    `ig_steps` backward passes per batch instead of one. The gradient is always read at the role's position in x and
    multiplies the role-aligned difference a(x')[p'] - a(x)[p].

    Returns (scores[component, role], {"ld_clean", "ld_cf"}: mean LD on x and on x' — their difference is the full
    counterfactual effect). The scores are on the CPU; the sweep runs on the model's device.
    """
    hooks = sorted({c.hook for c in components})
    n_roles = len(pairs.positions[0])
    dev = model_device(model)
    totals = torch.zeros(len(components), n_roles, dtype=torch.float64, device=dev)
    ld_clean = ld_cf = 0.0
    n = len(pairs.clean)
    for x, xc, last, ans, tgt, pos, pos_cf in pairs.batches(batch_size, pad_id, dev):
        emb = "blocks.0.hook_resid_pre"
        with torch.no_grad():
            logits_cf, cache_cf = model.run_with_cache(xc, names_filter=[*hooks, emb])
        ld_cf += logit_diff(logits_cf, last, ans, tgt).sum().item()
        grads: dict[str, Tensor] = {}
        clean_acts: dict[str, Tensor] = {}
        for step in range(ig_steps):
            alpha = step / ig_steps
            acts: dict[str, Tensor] = {}

            def keep(a, hook, acts=acts):
                a.retain_grad()
                acts[hook.name] = a
                return a

            def mix(a, hook, alpha=alpha, target=cache_cf[emb]):  # noqa: ARG001 - TransformerLens passes hook= by keyword
                return a if alpha == 0 else (1 - alpha) * a + alpha * target

            with torch.enable_grad():
                logits = model.run_with_hooks(x, fwd_hooks=[(emb, mix)] + [(h, keep) for h in hooks])
                ld = logit_diff(logits, last, ans, tgt)
                ld.sum().backward()
            if step == 0:
                ld_clean += ld.sum().item()
                clean_acts = {h: a.detach() for h, a in acts.items()}
            for h, a in acts.items():
                grads[h] = grads.get(h, 0) + a.grad / ig_steps
            model.zero_grad(set_to_none=True)
        b_idx = torch.arange(len(pos), device=pos.device)[:, None]
        for j, c in enumerate(components):
            # (b, role, ...): x's activation and gradient where each role sits in x, x' 's where it sits in x'
            a, g, a_cf = clean_acts[c.hook][b_idx, pos], grads[c.hook][b_idx, pos], cache_cf[c.hook][b_idx, pos_cf]
            if c.head is not None:
                a, g, a_cf = a[:, :, c.head], g[:, :, c.head], a_cf[:, :, c.head]
            totals[j] += ((a_cf - a) * g).sum(-1).sum(0).double()
    return (totals / n).float().cpu(), {"ld_clean": ld_clean / n, "ld_cf": ld_cf / n}


def select(scores: np.ndarray, share: float, cap: int) -> np.ndarray:
    """Indices of the smallest set, by descending |score|, whose |score| covers `share` of the total, at most `cap`."""
    if not 0 < share <= 1:
        raise LocateError(f"share must be in (0, 1], got {share}")
    mag = np.abs(scores)
    order = np.argsort(-mag, kind="stable")
    total = mag.sum()
    if total == 0:
        return order[:0]
    covered = np.cumsum(mag[order]) / total
    k = int(np.searchsorted(covered, share - 1e-12) + 1)
    return order[: min(k, cap)]


@torch.no_grad()
def patch_effects(
    model: HookedTransformer,
    pairs: PairBatch,
    patch_sets: list[list[tuple[Component, int]]],
    pad_id: int,
    batch_size: int = 64,
) -> list[float]:
    """Real activation patching. For each set of (component, role) patches: mean over pairs of
    LD(x with those activations taken from x') - LD(x), role-aligned: x' 's activation at the role's position in x'
    goes to the role's position in x. The clean LD and x''s activations are computed once per batch,
    then one forward pass per set."""
    hooks = sorted({c.hook for ps in patch_sets for c, _ in ps})
    deltas = np.zeros(len(patch_sets))
    n = len(pairs.clean)
    for x, xc, last, ans, tgt, pos, pos_cf in pairs.batches(batch_size, pad_id, model_device(model)):
        _, cache_cf = model.run_with_cache(xc, names_filter=hooks)
        base = logit_diff(model(x), last, ans, tgt)
        rows = torch.arange(len(pos), device=pos.device)
        for k, patches in enumerate(patch_sets):

            def patch(a, hook, patches=patches, pos=pos, pos_cf=pos_cf, rows=rows, cache_cf=cache_cf):
                a = a.clone()
                for c, r in patches:
                    if c.hook != hook.name:
                        continue
                    p, q = pos[:, r], pos_cf[:, r]
                    if c.head is None:
                        a[rows, p] = cache_cf[hook.name][rows, q]
                    else:
                        a[rows, p, c.head] = cache_cf[hook.name][rows, q, c.head]
                return a

            used = sorted({c.hook for c, _ in patches})
            patched = logit_diff(model.run_with_hooks(x, fwd_hooks=[(h, patch) for h in used]), last, ans, tgt)
            deltas[k] += (patched - base).sum().item()
    return list(deltas / n)


def patch_effect(model: HookedTransformer, pairs: PairBatch, patches: list[tuple[Component, int]], pad_id: int,
                 batch_size: int = 64) -> float:
    """Real patching of one set of (component, role) activations together; see `patch_effects`."""
    return patch_effects(model, pairs, [patches], pad_id, batch_size)[0]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    r = spearmanr(a, b).statistic
    return float(r) if r == r else float("nan")


def top_k_agreement(atp: Sequence[float], real: Sequence[float], k: int) -> float:
    """Share of the top-k components by |real effect| that are also in the top-k by |AtP|."""
    k = min(k, len(atp))
    if k == 0:
        return float("nan")
    ta = set(np.argsort(-np.abs(np.asarray(atp)), kind="stable")[:k])
    tr = set(np.argsort(-np.abs(np.asarray(real)), kind="stable")[:k])
    return len(ta & tr) / k


def validation_sample(n_total: int, top: list[int], n_random: int, seed: int) -> list[int]:
    """The top-N indices plus a random sample of the rest (deterministic under `seed`)."""
    rest = [i for i in range(n_total) if i not in set(top)]
    rng = random.Random(seed)
    return list(top) + sorted(rng.sample(rest, min(n_random, len(rest))))


def pairs_for(df, attribute: str, split: str | None = None, limit: int | None = None) -> tuple[PairBatch, list[str]]:
    """Clean/counterfactual pairs of one attribute from a prompt table (see sage_core.prompts.task). Returns the pairs and
    the role names (the order of `positions`)."""
    import polars as pl

    from sage_core.prompts.task import pair_target_token

    roles = [c.removeprefix("pos_") for c in df.columns if c.startswith("pos_")]
    cfs = df.filter(pl.col("pair_attr") == attribute)
    if split:
        cfs = cfs.filter(pl.col("split") == split)
    if cfs.is_empty():
        attrs = sorted(a for a in df["pair_attr"].unique().to_list() if a)
        raise LocateError(f"no counterfactual pairs for attribute {attribute!r}; the table has {attrs or 'none'}")
    # explicit order (prompt ids are zero-padded, so this is generation order): the same table always gives the
    # same pairs in the same order, whatever order a filter or join leaves the rows in
    cfs = cfs.sort("prompt_id")
    if limit:
        cfs = cfs.head(limit)
    clean = df.filter(pl.col("pair_of").is_null()).select("prompt_id", "tokens", "answer_token", "cf_answer_token",
                                                          *[f"pos_{r}" for r in roles])
    joined = cfs.select("pair_of", pl.col("prompt_id").alias("cf_id"), pl.col("tokens").alias("cf_tokens"),
                        pl.col("answer_token").alias("cf_answer"), *[pl.col(f"pos_{r}").alias(f"cf_pos_{r}")
                                                                     for r in roles]) \
        .join(clean, left_on="pair_of", right_on="prompt_id", how="inner").sort("cf_id")
    batch = PairBatch(clean=[], cf=[], answer=[], target=[], positions=[], cf_positions=[])
    for r in joined.iter_rows(named=True):
        batch.clean.append(r["tokens"])
        batch.cf.append(r["cf_tokens"])
        batch.answer.append(r["answer_token"])
        batch.target.append(pair_target_token(r["answer_token"], r["cf_answer_token"], r["cf_answer"]))
        batch.positions.append([r[f"pos_{x}"] for x in roles])
        batch.cf_positions.append([r[f"cf_pos_{x}"] for x in roles])
    return batch, roles


def locate_attribute(
    model: HookedTransformer, df, task: str, attribute: str, cfg: LocateConfig, pad_id: int
) -> tuple[list[dict], dict]:
    """Rank every (component, role) of one attribute by |AtP|, select per group, validate by real patching.

    Returns (ranking rows, validation summary). Row fields: task, attribute, hook, kind, layer, head, role, group,
    atp, rank (within its group, 1 = largest |AtP|), selected, patch_effect (None where not validated).
    """
    pairs, roles = pairs_for(df, attribute, split=cfg.split, limit=cfg.n_pairs)
    comps = all_components(model, cfg.kinds)
    scores, ld = atp_sweep(model, pairs, comps, pad_id, batch_size=cfg.batch_size, ig_steps=cfg.ig_steps)
    flat = [(c, r) for c in comps for r in range(len(roles))]
    atp = scores.flatten().numpy().astype(float)
    rows = [{"task": task, "attribute": attribute, "hook": c.hook, "kind": c.kind, "layer": c.layer, "head": c.head,
             "role": roles[r], "group": c.group, "atp": float(atp[i]), "rank": 0, "selected": False,
             "patch_effect": None} for i, (c, r) in enumerate(flat)]
    summary: dict = {"task": task, "attribute": attribute, "n_pairs": len(pairs.clean), "ld_clean": ld["ld_clean"],
                     "ld_cf": ld["ld_cf"], "full_effect": ld["ld_cf"] - ld["ld_clean"], "ig_steps": cfg.ig_steps}
    for group in ("sublayer", "residual"):
        idx = np.array([i for i, (c, _) in enumerate(flat) if c.group == group])
        if len(idx) == 0:
            continue
        order = idx[np.argsort(-np.abs(atp[idx]), kind="stable")]
        for rank, i in enumerate(order, 1):
            rows[i]["rank"] = rank
        kept = idx[select(atp[idx], cfg.share, cfg.cap)]
        for i in kept:
            rows[i]["selected"] = True
        mag = np.abs(atp[idx])
        summary[f"{group}_covered_share"] = float(np.abs(atp[kept]).sum() / mag.sum()) if mag.sum() else 0.0
        summary[f"{group}_n_selected"] = len(kept)
        top = list(order[: cfg.n_validate_top])
        sample = validation_sample(len(order), list(range(len(top))), cfg.n_validate_random, cfg.seed)
        checked = [int(order[j]) for j in sample]
        real = patch_effects(model, pairs, [[flat[i]] for i in checked], pad_id, cfg.batch_size)
        for i, e in zip(checked, real, strict=True):
            rows[i]["patch_effect"] = e
        summary[f"{group}_spearman"] = spearman([atp[i] for i in checked], real)
        summary[f"{group}_top5_agreement"] = top_k_agreement([atp[i] for i in checked], real, 5)
        summary[f"{group}_n_validated"] = len(checked)
        together = patch_effect(model, pairs, [flat[i] for i in kept], pad_id, cfg.batch_size) if len(kept) else 0.0
        full = summary["full_effect"]
        summary[f"{group}_selected_effect"] = together
        # a share of a negligible effect (an attribute the answer barely depends on) is noise: report NaN
        negligible = abs(full) < max(0.1, 0.02 * abs(summary["ld_clean"]))
        summary[f"{group}_recovered"] = float("nan") if negligible else together / full
    return rows, summary
