"""Supervised dictionaries: planted vectors are recovered, least squares equals its closed form, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_core.ground_truth.dictionaries import METHODS, DictionaryError, fit


def planted(n=3000, d=24, seed=0, noise=0.05):
    g = np.random.default_rng(seed)
    spec = {"IO": [f"n{i}" for i in range(6)], "S": [f"n{i}" for i in range(6)], "Pos": ["ABB", "BAB"]}
    true = {a: {v: g.standard_normal(d) for v in vals} for a, vals in spec.items()}
    for a in true:  # centre: only differences between values are identifiable
        m = np.mean(list(true[a].values()), axis=0)
        true[a] = {v: u - m for v, u in true[a].items()}
    labels = {a: list(g.choice(vals, n)) for a, vals in spec.items()}
    base = g.standard_normal(d) * 3
    acts = base + sum(np.stack([true[a][v] for v in labels[a]]) for a in spec) + noise * g.standard_normal((n, d))
    return torch.tensor(acts, dtype=torch.float32), labels, true


def _cos(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_recovers_planted_vectors(method):
    acts, labels, true = planted()
    dic = fit(acts, labels, method)
    for a in true:
        for v, u in true[a].items():
            assert _cos(dic.vector(a, v).numpy(), u) >= 0.99, (method, a, v)


def test_mse_equals_closed_form_least_squares():
    acts, labels, _ = planted(n=500, noise=0.5, seed=1)
    dic = fit(acts, labels, "mse")
    cols = [(a, v) for a, vals in labels.items() for v in sorted(set(vals))]
    x = np.stack([[1.0 if labels[a][i] == v else 0.0 for (a, v) in cols] for i in range(len(acts))])
    y = acts.double().numpy() - acts.double().numpy().mean(0)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose(dic.reconstruct(labels).double().numpy(), acts.double().numpy().mean(0) + x @ coef,
                               atol=1e-4)
    # and no other choice of vectors fits better: perturbing one vector raises the squared error
    err = ((dic.reconstruct(labels) - acts) ** 2).sum()
    dic.vectors["IO"]["n0"] += 0.01
    assert ((dic.reconstruct(labels) - acts) ** 2).sum() > err


def test_mean_method_by_hand():
    acts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    dic = fit(acts, {"A": ["x", "x", "y", "y"]}, "mean")
    assert torch.allclose(dic.mean, torch.tensor([1.0, 1.5]))
    assert torch.allclose(dic.vector("A", "x"), torch.tensor([1.0, -1.5]))
    assert torch.allclose(dic.vector("A", "y"), torch.tensor([-1.0, 1.5]))


def test_weighted_weights_are_the_least_squares_solution():
    acts, labels, _ = planted(n=400, noise=0.3, seed=2)
    dic = fit(acts, labels, "weighted")
    mean_dic = fit(acts, labels, "mean")
    x = np.stack([np.stack([mean_dic.vector(a, v).double().numpy() for v in labels[a]]).reshape(-1)
                  for a in labels], 1)
    y = (acts.double().numpy() - acts.double().numpy().mean(0)).reshape(-1)
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert [dic.weights[a] for a in labels] == pytest.approx(list(w), rel=1e-4)
    assert all(abs(v - 1) < 0.2 for v in dic.weights.values())


def test_unseen_values_rule():
    acts, labels, _ = planted(n=300)
    dic = fit(acts, labels, "mse")
    other = {a: list(v) for a, v in labels.items()}
    other["IO"][0] = "never-seen"
    rec = dic.reconstruct(other)  # the unseen value contributes zero
    assert torch.allclose(rec[0], dic.mean + dic.vector("S", other["S"][0]) + dic.vector("Pos", other["Pos"][0]),
                          atol=1e-5)
    with pytest.raises(DictionaryError, match="no vector for values \\['never-seen'\\]"):
        dic.edit_delta("IO", ["n1"], ["never-seen"])


def test_single_valued_attribute_is_refused():
    with pytest.raises(DictionaryError, match="single value"):
        fit(torch.randn(10, 4), {"A": ["x"] * 10}, "mean")
    with pytest.raises(DictionaryError, match="labels for"):
        fit(torch.randn(10, 4), {"A": ["x", "y"] * 4}, "mean")
