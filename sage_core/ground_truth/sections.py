"""How true a supervised dictionary is at a cross-section: interventions on the model through hooks.

On clean test prompts, with LD = logit(answer) - logit(competing answer):
- sufficiency = mean LD with a <- â  /  mean LD clean                                  (1 is best)
- necessity   = 1 - |LD_meanabl - LD_int| / |LD_meanabl - LD_clean|, a <- ā + (a - â) (1 is best)
- edit accuracy: a <- a - u_{i,v} + u_{i,v'} against the ground-truth patch a <- a(x'), as the share of pairs whose
  argmax prediction matches the patch's; "no intervention" (the clean argmax against the patch's) is the floor.
The patch takes x''s activation at the same role (for IOI's Pos that is another token index: the role moved).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from sage_core.ground_truth.cross_section import CrossSection
from sage_core.ground_truth.dictionaries import Dictionary
from sage_core.model.devices import model_device
from sage_core.model.transformer import final_norm, pad_sequences, start_block, unembed

if TYPE_CHECKING:  # annotations only: TransformerLens costs ~8 s to import
    from transformer_lens import HookedTransformer


class Intervention(BaseModel):
    """Set the activation of `section` at token `positions` (one per prompt) to `values` (n, d)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    section: CrossSection
    positions: list[int]
    values: Tensor


@torch.no_grad()
def final_logits_with(
    model: HookedTransformer,
    seqs: Sequence[Sequence[int]],
    interventions: Sequence[Intervention],
    pad_id: int,
    batch_size: int = 128,
    prefixes: PrefixCache | None = None,
) -> Float[Tensor, "n vocab"]:
    """Logits at each prompt's last position with every intervention applied (several at once when given), on the
    model's device; intervention values may sit on any device (they are moved to the activation they replace).

    Only what the interventions can change is run per prompt: the blocks before the first intervened one run once per
    distinct prompt (a call often holds each prompt several times, once per edit; `prefixes`, where the caller keeps
    one for this model, holds them across calls: every SAE scored at a cross-section patches the same prompts), and
    the unembedding only at the last position (a published model's vocabulary makes it a third of a pass at every
    position)."""
    dev = model_device(model)
    start = first_block(model, interventions)
    prefix = _prefixes(model, seqs, pad_id, start, batch_size, prefixes) if start else None
    out = []
    for i in range(0, len(seqs), batch_size):
        sl = slice(i, i + batch_size)
        toks = pad_sequences(seqs[sl], pad_id).to(dev)
        rows = torch.arange(len(toks), device=dev)
        hooks = []
        for iv in interventions:
            pos = torch.as_tensor(iv.positions[sl], device=dev)
            vals = iv.values[sl].to(torch.float32)

            def put(a, hook, pos=pos, vals=vals, head=iv.section.head, rows=rows):  # noqa: ARG001 - TransformerLens passes hook= by keyword
                a = a.clone()
                if head is None:
                    a[rows, pos] = vals.to(a.device, a.dtype)
                else:
                    a[rows, pos, head] = vals.to(a.device, a.dtype)
                return a

            hooks.append((iv.section.hook, put))
        last = torch.as_tensor([len(s) - 1 for s in seqs[sl]], device=dev)
        if prefix is None:
            resid = model.run_with_hooks(toks, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
        else:
            resid = model.run_with_hooks(prefix(sl, toks.shape[1]), fwd_hooks=hooks, start_at_layer=start,
                                         stop_at_layer=model.cfg.n_layers)
        at_last = resid[rows.to(resid.device), last.to(resid.device)]
        out.append(unembed(model, final_norm(model, at_last)))
    return torch.cat(out)


def first_block(model: HookedTransformer, interventions: Sequence[Intervention]) -> int:
    """The first block an intervention sits in (`start_block`)."""
    return start_block(model, [iv.section.hook for iv in interventions])


class PrefixCache:
    """Residual streams entering a block, per set of distinct prompts, for one model on one device: kept least
    recently used first within `max_bytes` (the newest always), shared by threads."""

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._kept: OrderedDict[tuple, Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Tensor | None:
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
            return self._kept.get(key)

    def put(self, key: tuple, resid: Tensor) -> None:
        with self._lock:
            self._kept[key] = resid
            while len(self._kept) > 1 and self.nbytes > self.max_bytes:
                self._kept.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._kept.values())


def _prefixes(model: HookedTransformer, seqs: Sequence[Sequence[int]], pad_id: int, start: int, batch_size: int,
              cache: PrefixCache | None = None):
    """The residual stream entering block `start` of each distinct prompt, computed once (right padding and causal
    attention: a real position never sees the padding, so a prompt's prefix does not depend on what it is padded to);
    returns a function giving the rows of a slice of `seqs`, padded to a length."""
    dev = model_device(model)
    index: dict[tuple[int, ...], int] = {}
    for s in seqs:
        index.setdefault(tuple(s), len(index))
    uniq = list(index)
    width = max(len(s) for s in uniq)
    key = (start, pad_id, tuple(uniq))
    resid = cache.get(key) if cache is not None else None
    if resid is None:
        resid = torch.cat([model(pad_sequences(uniq[i:i + batch_size], pad_id, width).to(dev), stop_at_layer=start)
                           for i in range(0, len(uniq), batch_size)])
        if cache is not None:
            cache.put(key, resid)
    which = torch.as_tensor([index[tuple(s)] for s in seqs], device=resid.device)

    def rows(sl: slice, length: int) -> Tensor:
        return resid[which[sl], :length]

    return rows


def mean_ld(logits: Tensor, answer: Int[Tensor, " n"], competing: Int[Tensor, " n"]) -> float:
    answer, competing = answer.to(logits.device), competing.to(logits.device)
    return (logits.gather(1, answer[:, None]) - logits.gather(1, competing[:, None])).mean().item()


def sufficiency(ld_recon: float, ld_clean: float) -> float:
    return ld_recon / ld_clean if ld_clean else float("nan")


def necessity(ld_meanabl: float, ld_int: float, ld_clean: float) -> float:
    denom = abs(ld_meanabl - ld_clean)
    return 1 - abs(ld_meanabl - ld_int) / denom if denom > 1e-9 else float("nan")


def argmax_agreement(a: Tensor, b: Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1).to(a.device)).float().mean().item() if len(a) else float("nan")


class CleanSet(BaseModel):
    """Clean test prompts at one cross-section: tokens, positions, activations, labels, answers."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    tokens: list[list[int]]
    positions: list[int]
    acts: Tensor
    labels: dict[str, list[str]]
    answer: Tensor
    competing: Tensor


class PairSet(BaseModel):
    """Counterfactual pairs of one attribute at one cross-section."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    attribute: str
    tokens: list[list[int]]
    positions: list[int]
    acts: Tensor
    cf_acts: Tensor
    old: list[str]
    new: list[str]


def quality(
    model: HookedTransformer, dic: Dictionary, section: CrossSection, clean: CleanSet, pairs: list[PairSet],
    pad_id: int,
) -> list[dict]:
    """One row per attribute: sufficiency, necessity, edit accuracy, no-intervention floor, n_test, n_unseen."""
    recon = dic.reconstruct(clean.labels)
    mean = dic.mean.expand_as(clean.acts)

    def ld(values: Tensor | None) -> float:
        ivs = [] if values is None else [Intervention(section=section, positions=clean.positions, values=values)]
        return mean_ld(final_logits_with(model, clean.tokens, ivs, pad_id), clean.answer, clean.competing)

    ld_clean, ld_recon, ld_meanabl = ld(None), ld(recon), ld(mean)
    ld_int = ld(mean + (clean.acts - recon))
    suff, nec = sufficiency(ld_recon, ld_clean), necessity(ld_meanabl, ld_int, ld_clean)
    rows = []
    for ps in pairs:
        seen = [i for i, (a, b) in enumerate(zip(ps.old, ps.new, strict=True))
                if dic.has(ps.attribute, a) and dic.has(ps.attribute, b)]
        edit_acc = floor = float("nan")
        if seen:
            toks = [ps.tokens[i] for i in seen]
            pos = [ps.positions[i] for i in seen]
            acts, cf = ps.acts[seen], ps.cf_acts[seen]
            delta = dic.edit_delta(ps.attribute, [ps.old[i] for i in seen], [ps.new[i] for i in seen])
            base = final_logits_with(model, toks, [], pad_id)
            edited = final_logits_with(model, toks, [Intervention(section=section, positions=pos,
                                                                  values=acts + delta)], pad_id)
            patched = final_logits_with(model, toks, [Intervention(section=section, positions=pos, values=cf)],
                                        pad_id)
            edit_acc, floor = argmax_agreement(edited, patched), argmax_agreement(base, patched)
        rows.append({"attribute": ps.attribute, "sufficiency": suff, "necessity": nec, "edit_accuracy": edit_acc,
                     "no_intervention": floor, "n_test": len(clean.tokens), "n_edit": len(seen),
                     "n_unseen": len(ps.old) - len(seen), "ld_clean": ld_clean})
    return rows


def section_slice(acts: np.ndarray, role_index: int, head: int | None) -> np.ndarray:
    """(prompt, role, d) or (prompt, role, head, d_head) activations -> (prompt, d) at one role (and head)."""
    a = acts[:, role_index]
    return a[:, head] if head is not None else a


class PairRows(BaseModel):
    """Rows (of the prompt table and its activations) of one attribute's test pairs: x and its counterfactual x'."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    attribute: str
    x: np.ndarray
    xp: np.ndarray
    old: list[str]
    new: list[str]


class SplitRows(BaseModel):
    """Which rows fit a dictionary, which are clean test prompts, and which form the test pairs of each attribute.

    Rows index the prompt table and every activation array captured from it, so any hook can be gathered alike.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    roles: list[str]
    fit: np.ndarray
    clean: np.ndarray
    pairs: list[PairRows]


def split_rows(df, attributes: list[str], split: str, max_test: int | None = None) -> SplitRows:
    """Fitting uses every row (clean and counterfactual) NOT in `split`, so a dictionary never sees the prompts it is
    judged on; the clean set is `split`'s original prompts; pairs join each counterfactual to its original. With
    `max_test`, the first that many clean prompts (and pairs per attribute) are kept.

    Clean prompts and pairs are in prompt-id order (zero-padded ids: generation order), never in whatever order a
    filter or join leaves them: the references and the scoring call this separately and must pick the same pairs."""
    import polars as pl

    roles = [c.removeprefix("pos_") for c in df.columns if c.startswith("pos_")]
    df = df.with_row_index("_row")
    clean_df = df.filter((pl.col("split") == split) & pl.col("pair_of").is_null()).sort("prompt_id")
    pairs = []
    for attr in attributes:
        cf = df.filter((pl.col("split") == split) & (pl.col("pair_attr") == attr)).select(
            "pair_of", pl.col("prompt_id").alias("_cf_id"), pl.col("_row").alias("_cf_row"),
            pl.col(f"attr_{attr}").alias("_new"))
        j = cf.join(clean_df, left_on="pair_of", right_on="prompt_id", how="inner").sort("pair_of", "_cf_id")
        j = j.head(max_test) if max_test else j
        if not j.is_empty():
            pairs.append(PairRows(attribute=attr, x=j["_row"].to_numpy(), xp=j["_cf_row"].to_numpy(),
                                  old=j[f"attr_{attr}"].to_list(), new=j["_new"].to_list()))
    clean = clean_df["_row"].to_numpy()
    return SplitRows(roles=roles, fit=df.filter(pl.col("split") != split)["_row"].to_numpy(),
                     clean=clean[:max_test] if max_test else clean, pairs=pairs)


def build_sets(df, acts: np.ndarray, section: CrossSection, attributes: list[str], split: str,
               max_test: int | None = None, device: torch.device | str = "cpu"):
    """From a prompt table and its role-position activations (rows aligned with the table): the fitting data, the
    clean test set and one pair set per attribute, their tensors on `device`. Returns (fit_acts, fit_labels, clean,
    pairs)."""
    rows = split_rows(df, attributes, split, max_test)
    if section.role not in rows.roles:
        raise ValueError(f"cross-section role {section.role!r} is not a role of this task ({rows.roles})")
    a = section_slice(acts, rows.roles.index(section.role), section.head)

    def col(name: str, idx: np.ndarray) -> list:
        return df[name].gather(idx).to_list()

    def t(idx: np.ndarray) -> Tensor:
        return torch.as_tensor(a[idx], dtype=torch.float32, device=device)

    fit_labels = {attr: col(f"attr_{attr}", rows.fit) for attr in attributes}
    clean = CleanSet(tokens=col("tokens", rows.clean), positions=col(f"pos_{section.role}", rows.clean),
                     acts=t(rows.clean), labels={attr: col(f"attr_{attr}", rows.clean) for attr in attributes},
                     answer=torch.tensor(col("answer_token", rows.clean), device=device),
                     competing=torch.tensor(col("cf_answer_token", rows.clean), device=device))
    pairs = [PairSet(attribute=p.attribute, tokens=col("tokens", p.x), positions=col(f"pos_{section.role}", p.x),
                     acts=t(p.x), cf_acts=t(p.xp), old=p.old, new=p.new) for p in rows.pairs]
    return t(rows.fit), fit_labels, clean, pairs
