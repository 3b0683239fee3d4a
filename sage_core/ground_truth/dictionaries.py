"""Supervised feature dictionaries (the ground truth) at one cross-section, from activations and attribute labels.

Methods (docs/METHOD.md §3), for activations a (n, d) with mean ā and attributes i with values v_i(x):
- mean:     u_{i,v} = mean(a | attr_i = v) - ā
- mse:      U = argmin Σ_x ||a(x) - ā - Σ_i u_{i,v_i(x)}||²  (least squares over the one-hot attribute design)
- weighted: â(x) = ā + Σ_i w_i u_{i,v_i(x)} with the mean vectors and per-attribute weights w fit by least squares.

The one-hot design is rank-deficient (each attribute's columns sum to the constant column), so `mse` takes the
minimum-norm solution and then centres each attribute's vectors (frequency-weighted), which leaves predictions
unchanged. Unseen values: a value absent from the fitting prompts has no vector; `reconstruct` gives it the zero
vector (the attribute then contributes its average, ā's share) and `edit` refuses it — callers count such prompts.

A dictionary is fit on the activations' device (the least squares in float64 there) and its vectors stay there;
`Dictionary.to` moves one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict
from torch import Tensor

Method = Literal["mean", "mse", "weighted"]
METHODS: tuple[Method, ...] = ("mean", "mse", "weighted")


class DictionaryError(ValueError):
    """A dictionary cannot be fit as asked; the message says what to fix."""


class Dictionary(BaseModel):
    """Fitted vectors u[attribute][value] (each shape (d,)), the mean ā and the per-attribute weights."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    method: str
    mean: Tensor
    vectors: dict[str, dict[str, Tensor]]
    weights: dict[str, float]

    @property
    def attributes(self) -> list[str]:
        return list(self.vectors)

    def to(self, device: str | torch.device) -> Dictionary:
        """The same dictionary with its tensors on `device` (on the CPU before it is written to disk)."""
        return self.model_copy(update={"mean": self.mean.to(device), "vectors": {
            a: {v: u.to(device) for v, u in vecs.items()} for a, vecs in self.vectors.items()}})

    def vector(self, attribute: str, value: str) -> Tensor:
        return self.weights[attribute] * self.vectors[attribute][value]

    def has(self, attribute: str, value: str) -> bool:
        return value in self.vectors[attribute]

    def reconstruct(self, labels: dict[str, list[str]]) -> Float[Tensor, "n d"]:
        """â(x) = ā + Σ_i w_i u_{i,v_i(x)} (an unseen value contributes zero)."""
        n = len(next(iter(labels.values())))
        out = self.mean.expand(n, -1).clone()
        for attr in self.attributes:
            zero = torch.zeros_like(self.mean)
            out += torch.stack([self.vectors[attr].get(v, zero) for v in labels[attr]]) * self.weights[attr]
        return out

    def edit_delta(self, attribute: str, old: list[str], new: list[str]) -> Float[Tensor, "n d"]:
        """-w u_{i,old} + w u_{i,new} per prompt; raises on a value the dictionary never saw."""
        missing = sorted({v for v in old + new if not self.has(attribute, v)})
        if missing:
            raise DictionaryError(f"attribute {attribute!r} has no vector for values {missing} (unseen in fitting)")
        return torch.stack([self.vector(attribute, b) - self.vector(attribute, a) for a, b in zip(old, new,
                                                                                                   strict=True)])

    def matrix(self) -> tuple[Float[Tensor, "k d"], list[tuple[str, str]]]:
        """All (weighted) vectors stacked, with their (attribute, value) labels."""
        keys = [(a, v) for a in self.attributes for v in sorted(self.vectors[a])]
        return torch.stack([self.vector(a, v) for a, v in keys]), keys


def _check(acts: Tensor, labels: dict[str, list[str]]) -> None:
    if acts.ndim != 2:
        raise DictionaryError(f"activations must be (n, d), got {tuple(acts.shape)}")
    for attr, vals in labels.items():
        if len(vals) != len(acts):
            raise DictionaryError(f"attribute {attr!r} has {len(vals)} labels for {len(acts)} activations")
        if len(set(vals)) < 2:
            raise DictionaryError(f"attribute {attr!r} takes a single value ({vals[0]!r}) in the fitting prompts; a "
                                  f"dictionary needs at least two values — use more prompts or drop the attribute")


def _mean_vectors(acts: Tensor, labels: dict[str, list[str]], mean: Tensor) -> dict[str, dict[str, Tensor]]:
    out: dict[str, dict[str, Tensor]] = {}
    for attr, vals in labels.items():
        arr = np.asarray(vals)
        out[attr] = {v: acts[torch.as_tensor(arr == v, device=acts.device)].mean(0) - mean for v in sorted(set(vals))}
    return out


def fit(acts: Float[Tensor, "n d"], labels: dict[str, list[str]], method: Method) -> Dictionary:
    """Fit one dictionary. `labels[attribute]` holds each prompt's value (as a string)."""
    _check(acts, labels)
    acts = acts.double()
    mean = acts.mean(0)
    if method == "mean":
        vecs = _mean_vectors(acts, labels, mean)
        weights = {a: 1.0 for a in labels}
    elif method == "mse":
        cols: list[tuple[str, str]] = [(a, v) for a, vals in labels.items() for v in sorted(set(vals))]
        design = torch.zeros(len(acts), len(cols), dtype=torch.float64, device=acts.device)
        for j, (a, v) in enumerate(cols):
            design[:, j] = torch.as_tensor(np.asarray(labels[a]) == v, dtype=torch.float64, device=acts.device)
        coef = torch.linalg.pinv(design) @ (acts - mean)  # minimum-norm least squares
        vecs = {a: {} for a in labels}
        for j, (a, v) in enumerate(cols):
            vecs[a][v] = coef[j]
        for a, vals in labels.items():  # centre each attribute's block: predictions unchanged up to Σ of centres
            freq = {v: vals.count(v) / len(vals) for v in vecs[a]}
            centre = sum(freq[v] * vecs[a][v] for v in vecs[a])
            vecs[a] = {v: u - centre for v, u in vecs[a].items()}
        weights = {a: 1.0 for a in labels}
    elif method == "weighted":
        vecs = _mean_vectors(acts, labels, mean)
        attrs = list(labels)
        # regress (a - ā) on the per-prompt mean vectors of each attribute: one weight per attribute
        cols_t = [torch.stack([vecs[a][v] for v in labels[a]]).reshape(-1) for a in attrs]  # each (n*d,)
        x = torch.stack(cols_t, 1)
        y = (acts - mean).reshape(-1, 1)
        if x.device.type == "cpu":
            w = torch.linalg.lstsq(x, y).solution.squeeze(1)
        else:  # CUDA's lstsq (driver gels) assumes full rank; pinv gives the same minimum-norm solution either way
            w = (torch.linalg.pinv(x) @ y).squeeze(1)
        weights = {a: float(w[k]) for k, a in enumerate(attrs)}
    else:
        raise DictionaryError(f"unknown method {method!r}; use one of {METHODS}")
    return Dictionary(method=method, mean=mean.float(),
                      vectors={a: {v: u.float() for v, u in d.items()} for a, d in vecs.items()}, weights=weights)
