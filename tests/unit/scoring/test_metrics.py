"""SAE scoring metrics against hand-computed numbers and brute-force references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sage_core.scoring.metrics import (
    best_alignment,
    edit_magnitude,
    explained_variance,
    f1_scores,
    greedy_edit,
    interpretability,
    mean_l0,
)

# ---------------------------------------------------------------- reconstruction


def test_explained_variance_by_hand():
    torch.manual_seed(0)
    a = torch.randn(10, 4)
    assert explained_variance(a, a) == pytest.approx(1.0)
    assert explained_variance(a, a.mean(0, keepdim=True).expand_as(a)) == pytest.approx(0.0, abs=1e-7)
    # a = [[1, 0], [3, 2]]: ā = [2, 1], Σ‖a - ā‖² = 4; â = [[1, 1], [2, 2]]: Σ‖a - â‖² = 1 + 1 = 2 -> 1 - 2/4
    a2 = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    r2 = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert explained_variance(a2, r2) == pytest.approx(0.5)
    assert math.isnan(explained_variance(torch.ones(5, 3), torch.zeros(5, 3)))


def test_mean_l0():
    codes = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.5, 1.0]])
    assert mean_l0(codes) == pytest.approx(5 / 3)


# ---------------------------------------------------------------- interpretability


def _brute_f1(active: torch.Tensor, labels: dict[str, list[str]]) -> list[dict]:
    n, m = active.shape
    out = []
    for attr, vals in labels.items():
        for v in sorted(set(vals)):
            best = None
            for j in range(m):
                tp = sum(1 for i in range(n) if active[i, j] and vals[i] == v)
                fp = sum(1 for i in range(n) if active[i, j] and vals[i] != v)
                fn = sum(1 for i in range(n) if not active[i, j] and vals[i] == v)
                p = tp / (tp + fp) if tp + fp else 0.0
                r = tp / (tp + fn) if tp + fn else 0.0
                f = 2 * p * r / (p + r) if p + r else 0.0
                if best is None or f > best[1]:
                    best = (j, f, p, r)
            j, f, p, r = best
            out.append(
                {
                    "attribute": attr,
                    "value": v,
                    "best_feature": j,
                    "f1": f,
                    "precision": p,
                    "recall": r,
                    "support": sum(x == v for x in vals),
                }
            )
    return out


def test_f1_scores_match_brute_force():
    torch.manual_seed(1)
    for trial in range(20):
        n, m = 30, 6
        density = 0.1 + 0.8 * torch.rand(1).item()
        active = torch.rand(n, m) < density
        if trial % 5 == 0:
            active[:, 2] = False  # a dead feature: no positives predicted
        labels = {}
        for attr in ("a", "b"):
            n_vals = int(torch.randint(2, 5, (1,)))
            labels[attr] = [f"{attr}{int(x)}" for x in torch.randint(0, n_vals, (n,))]
        got, want = f1_scores(active, labels), _brute_f1(active, labels)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (g["attribute"], g["value"], g["best_feature"], g["support"]) == (
                w["attribute"],
                w["value"],
                w["best_feature"],
                w["support"],
            )
            for key in ("f1", "precision", "recall"):
                assert g[key] == pytest.approx(w[key], abs=1e-12)


def test_interpretability_by_hand():
    # attribute "name": feature 0 is exactly [name == A] (F1 1); B's best is feature 1 = [B or C]: p 1/2, r 1 -> 2/3;
    # C likewise 2/3. Attribute "pos": no feature fits better than feature 1 on [pos == x] (rows 1, 2).
    names = ["A", "A", "B", "C"]
    pos = ["y", "x", "x", "y"]
    active = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    rows = f1_scores(active, {"name": names, "pos": pos})
    by = {(r["attribute"], r["value"]): r for r in rows}
    assert by["name", "A"]["f1"] == 1.0 and by["name", "A"]["best_feature"] == 0
    assert by["name", "B"]["f1"] == pytest.approx(2 / 3) and by["name", "B"]["best_feature"] == 1
    assert by["name", "B"]["precision"] == 0.5 and by["name", "B"]["recall"] == 1.0
    # pos x: both features TP 1, FP 1, FN 1 -> F1 1/2, tie -> feature 0; pos y likewise
    assert by["pos", "x"]["f1"] == 0.5 and by["pos", "x"]["best_feature"] == 0
    summary = interpretability(active, {"name": names, "pos": pos})
    f1_name = (1 + 2 / 3 + 2 / 3) / 3
    assert summary["f1_name"] == pytest.approx(f1_name)
    assert summary["f1_pos"] == pytest.approx(0.5)
    assert summary["f1_mean"] == pytest.approx((f1_name + 0.5) / 2)
    assert summary["coverage"] == pytest.approx(3 / 5)  # A, B, C >= 0.6; x, y not


def test_f1_scores_rejects_wrong_length():
    with pytest.raises(ValueError):
        f1_scores(torch.ones(3, 2, dtype=torch.bool), {"a": ["x", "y"]})


# ---------------------------------------------------------------- sparse control


def _dist(e, t):
    return float(torch.linalg.vector_norm(e - t))


def _moves(codes_x, codes_xp, decoder):
    """All moves of one row, in the tie order the implementation uses: removes by j, then adds by j."""
    m = decoder.shape[0]
    rem = [("r", j, -codes_x[j] * decoder[j]) for j in range(m) if codes_x[j] > 0]
    add = [("a", j, codes_xp[j] * decoder[j]) for j in range(m) if codes_xp[j] > 0]
    return rem + add


def _brute_greedy_row(base, target, codes_x, codes_xp, decoder, k):
    e, used, n, removed = base.clone(), set(), 0, 0.0
    moves = _moves(codes_x, codes_xp, decoder)
    for _ in range(k):
        best, best_d = None, _dist(e, target)
        for idx, (_, _, v) in enumerate(moves):
            if idx in used:
                continue
            d = _dist(e + v, target)
            if d < best_d:
                best, best_d = idx, d
        if best is None:
            break
        kind, j, v = moves[best]
        e, n = e + v, n + 1
        used.add(best)
        if kind == "r":
            removed += float(codes_x[j] * decoder[j].norm())
    return e, n, removed


def _random_case(p=3, m=5, d=4, dtype=torch.float64):
    base = torch.randn(p, d, dtype=dtype)
    target = base + torch.randn(p, d, dtype=dtype)
    codes_x = torch.relu(torch.randn(p, m, dtype=dtype))
    codes_xp = torch.relu(torch.randn(p, m, dtype=dtype))
    decoder = torch.randn(m, d, dtype=dtype)
    return base, target, codes_x, codes_xp, decoder


def test_greedy_edit_matches_brute_force_greedy():
    torch.manual_seed(2)
    for _ in range(20):
        base, target, cx, cxp, dec = _random_case()
        k = int(torch.randint(1, 5, (1,)))
        e, n, removed = greedy_edit(base, target, cx, cxp, dec, k)
        for i in range(base.shape[0]):
            be, bn, br = _brute_greedy_row(base[i], target[i], cx[i], cxp[i], dec, k)
            torch.testing.assert_close(e[i], be)
            assert int(n[i]) == bn
            assert float(removed[i]) == pytest.approx(br, abs=1e-12)


def test_greedy_edits_at_several_budgets_match_one_run_each():
    """One greedy run to the largest budget gives every budget's result (what score_section asks for, ks 1, 2, 4, 8),
    including budgets the run stops short of and a budget of 0."""
    from sage_core.scoring.metrics import greedy_edits

    torch.manual_seed(4)
    for _ in range(10):
        base, target, cx, cxp, dec = _random_case()
        ks = (0, 1, 2, 4, 8, 50)
        for k, (e, n, r) in zip(ks, greedy_edits(base, target, cx, cxp, dec, ks), strict=True):
            we, wn, wr = greedy_edit(base, target, cx, cxp, dec, k)
            torch.testing.assert_close(e, we)
            assert torch.equal(n, wn)
            torch.testing.assert_close(r, wr)


def _exhaustive_best(base, target, codes_x, codes_xp, decoder, k):
    moves = [v for _, _, v in _moves(codes_x, codes_xp, decoder)]
    best = _dist(base, target)
    for size in range(1, k + 1):
        for subset in itertools.combinations(moves, size):
            best = min(best, _dist(base + sum(subset), target))
    return best


def test_greedy_edit_against_exhaustive_search():
    torch.manual_seed(3)
    for _ in range(20):
        base, target, cx, cxp, dec = _random_case()
        e0, _, _ = greedy_edit(base, target, cx, cxp, dec, 0)
        e1, _, _ = greedy_edit(base, target, cx, cxp, dec, 1)
        e2, _, _ = greedy_edit(base, target, cx, cxp, dec, 2)
        for i in range(base.shape[0]):
            d0, d1, d2 = (_dist(x[i], target[i]) for x in (e0, e1, e2))
            opt1 = _exhaustive_best(base[i], target[i], cx[i], cxp[i], dec, 1)
            opt2 = _exhaustive_best(base[i], target[i], cx[i], cxp[i], dec, 2)
            assert d1 == pytest.approx(opt1, abs=1e-12)
            assert opt2 <= d2 + 1e-12
            assert d2 <= d1 + 1e-12
            assert d1 <= d0 + 1e-12


def test_greedy_edit_exact_remove_plus_add():
    torch.manual_seed(4)
    m, d = 5, 8
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    dec = q[:m] * torch.tensor([[2.0], [1.0], [0.5], [3.0], [1.5]], dtype=torch.float64)  # orthogonal rows
    cx = torch.tensor([[0.7, 1.2, 0.0, 0.4, 0.9]], dtype=torch.float64)
    cxp = torch.tensor([[0.3, 0.0, 1.1, 0.8, 0.0]], dtype=torch.float64)
    base = cx @ dec + 0.1 * torch.randn(1, d, dtype=torch.float64)
    a, b = 1, 2  # remove feature 1 (active on x), add feature 2 (active on x')
    target = base - cx[0, a] * dec[a] + cxp[0, b] * dec[b]
    for k in (2, 4):
        e, n, removed = greedy_edit(base, target, cx, cxp, dec, k)
        torch.testing.assert_close(e, target)
        assert int(n[0]) == 2  # stops once exact: every further move increases the distance
        assert float(removed[0]) == pytest.approx(float(cx[0, a] * dec[a].norm()))
    # float32 in -> float32 out
    e32, _, r32 = greedy_edit(base.float(), target.float(), cx.float(), cxp.float(), dec.float(), 2)
    assert e32.dtype == torch.float32 and r32.dtype == torch.float32
    torch.testing.assert_close(e32, target.float())


def test_greedy_edit_no_moves():
    torch.manual_seed(5)
    base, target, cx, cxp, dec = _random_case()
    e, n, removed = greedy_edit(base, target, cx, cxp, dec, 0)
    assert torch.equal(e, base) and n.tolist() == [0, 0, 0] and removed.tolist() == [0.0, 0.0, 0.0]
    zeros = torch.zeros_like(cx)
    e, n, removed = greedy_edit(base, target, zeros, zeros, dec, 4)
    assert torch.equal(e, base) and n.tolist() == [0, 0, 0] and removed.tolist() == [0.0, 0.0, 0.0]


def test_edit_magnitude_by_hand():
    dec = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # norms 2 and 1
    codes = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.5, 1.0]])  # total weights 4, 0 (skipped), 2
    removed = torch.tensor([2.0, 0.0, 2.0])  # shares 0.5, -, 1.0
    # (0.5 - 0.25) / 0.75 = 1/3 and (1 - 0.25) / 0.75 = 1
    assert edit_magnitude(removed[:1], codes[:1], dec, 0.25) == pytest.approx(1 / 3)
    assert edit_magnitude(removed, codes, dec, 0.25) == pytest.approx((1 / 3 + 1) / 2)
    # per-row supervised share: row 0 at s_sup 0.5 -> 0, row 2 at s_sup 0 -> 1
    assert edit_magnitude(removed, codes, dec, torch.tensor([0.5, 0.3, 0.0])) == pytest.approx(0.5)
    assert math.isnan(edit_magnitude(removed[1:2], codes[1:2], dec, 0.25))
    # the decoder's norms handed in (once per SAE and attribute) give the same figures
    norms = dec.double().norm(dim=1)
    assert edit_magnitude(removed, codes, dec, 0.25, norms) == edit_magnitude(removed, codes, dec, 0.25)


# ---------------------------------------------------------------- alignment


def _brute_mcc(cos: torch.Tensor) -> float:
    k, m = cos.shape
    if k <= m:
        return max(
            sum(float(cos[i, c]) for i, c in enumerate(cols)) / k for cols in itertools.permutations(range(m), k)
        )
    return max(sum(float(cos[r, j]) for j, r in enumerate(rows)) / m for rows in itertools.permutations(range(k), m))


def test_best_alignment_identical_and_permuted():
    torch.manual_seed(6)
    gt = torch.randn(4, 6)
    res = best_alignment(gt, gt)
    assert res["mcc"] == pytest.approx(1.0) and res["mean_best_cos"] == pytest.approx(1.0)
    perm = torch.tensor([2, 0, 3, 1])
    signs = torch.tensor([[1.0], [-1.0], [-1.0], [1.0]])
    dirs = torch.cat([(gt * signs * 3.0)[perm], torch.zeros(1, 6)])  # scaled, negated, permuted, plus a zero row
    res = best_alignment(gt, dirs)
    assert res["mcc"] == pytest.approx(1.0)
    assert res["best_cos"].tolist() == pytest.approx([1.0] * 4)
    assert res["best_feature"][perm].tolist() == [0, 1, 2, 3]


def test_best_alignment_hungarian_differs_from_greedy():
    # both gt vectors are closest to direction 0; the one-to-one matching must send gt 0 to direction 1
    gt = torch.tensor([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0]])
    dirs = torch.eye(3)
    res = best_alignment(gt, dirs)
    cos = (gt / gt.norm(dim=1, keepdim=True)).abs().double()
    assert res["best_feature"].tolist() == [0, 0]
    assert res["mean_best_cos"] == pytest.approx(float(cos[:, 0].mean()))
    assert res["mcc"] == pytest.approx((float(cos[0, 1]) + float(cos[1, 0])) / 2)
    assert res["mcc"] == pytest.approx(_brute_mcc(cos))
    assert res["mcc"] < res["mean_best_cos"]
    # more gt vectors than directions: mean over the min(k, m) matched pairs
    res_t = best_alignment(dirs, gt)
    assert res_t["mcc"] == pytest.approx(_brute_mcc(cos.T))


def test_best_alignment_random_vs_brute_force():
    torch.manual_seed(7)
    for k, m in [(3, 5), (5, 3), (4, 4), (2, 6)]:
        gt, dirs = torch.randn(k, 5), torch.randn(m, 5)
        gt[0] = 0.0  # a zero-norm ground-truth vector has |cos| 0 everywhere
        res = best_alignment(gt, dirs)
        g = gt.double() / gt.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
        dn = dirs.double() / dirs.double().norm(dim=1, keepdim=True)
        cos = (g @ dn.T).abs()
        assert float(res["best_cos"][0]) == 0.0
        torch.testing.assert_close(res["best_cos"], cos.max(1).values)
        assert res["mcc"] == pytest.approx(_brute_mcc(cos))
