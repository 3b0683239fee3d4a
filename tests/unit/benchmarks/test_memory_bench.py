"""The pure parts of benchmarks/memory.py: the perturbed SAE copies, their names, and the report's ratios."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.memory import COPY, copy_names, perturbed, ranked, ratios, report_lines, write_copy


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(8, 16, generator=g), "b_enc": torch.zeros(16), "W_dec": torch.randn(16, 8, generator=g),
            "threshold": torch.full((16,), 0.5, dtype=torch.float16), "steps": torch.arange(3)}


def test_perturbation_keeps_shapes_and_dtypes_and_changes_values_a_little():
    w = _weights()
    out = perturbed(w, 0.01, seed=1)
    assert out.keys() == w.keys()
    for k, t in w.items():
        assert out[k].shape == t.shape and out[k].dtype == t.dtype
    for k in ("W_enc", "b_enc", "W_dec", "threshold"):  # every float tensor moves, constant ones included
        assert not torch.equal(out[k], w[k])
    assert torch.equal(out["steps"], w["steps"])  # integers stay
    rel = (out["W_enc"] - w["W_enc"]).std() / w["W_enc"].std()
    assert 0.005 < rel < 0.02  # noise of 1% of the tensor's spread
    assert torch.equal(perturbed(w, 0.01, seed=1)["W_dec"], out["W_dec"])  # a seed gives the same copy
    assert not torch.equal(perturbed(w, 0.01, seed=2)["W_dec"], out["W_dec"])  # another seed another one


def test_write_copy_keeps_cfg_and_the_saelens_files_only(tmp_path):
    src = tmp_path / "zoo" / "sae-a"
    src.mkdir(parents=True)
    (src / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "metadata": {"hook_name": "blocks.0.hook"}}))
    save_file(_weights(), str(src / "sae_weights.safetensors"))
    (src / ".complete").write_text("{}")
    dst = write_copy(src, tmp_path / "copies" / "sae-a-copy-0", 0.01, seed=0)
    assert sorted(p.name for p in dst.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert (dst / "cfg.json").read_text() == (src / "cfg.json").read_text()
    got, want = load_file(str(dst / "sae_weights.safetensors")), _weights()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert not torch.equal(got["W_dec"], want["W_dec"])


def test_copy_names_are_unique_and_round_robin():
    names = copy_names(["a", "b", "c"], 7)
    assert names == [f"a{COPY}0", f"b{COPY}0", f"c{COPY}0", f"a{COPY}1", f"b{COPY}1", f"c{COPY}1", f"a{COPY}2"]
    assert len(set(copy_names(["a", "b"], 100))) == 100
    with pytest.raises(ValueError):
        copy_names([], 3)


def _p(peak, run_peak=None, start=None, end=None):
    return {"peak": peak, "run_peak": run_peak, "start": start, "end": end}


def test_workers_are_ranked_by_peak_and_the_flow_kept():
    procs = {"tcp://127.0.0.1:2": _p(700.0), "flow": _p(900.0), "tcp://127.0.0.1:1": _p(800.0)}
    assert ranked(procs) == {"flow": _p(900.0), "worker 1": _p(800.0), "worker 2": _p(700.0)}
    assert ranked({"flow": _p(1.0)}) == {"flow": _p(1.0)}


def test_ratios_by_hand():
    small = {"flow": _p(1000.0, 800.0), "worker 1": _p(500.0)}
    large = {"flow": _p(1100.0, 1200.0), "worker 1": _p(750.0)}
    assert ratios(small, large) == pytest.approx({"flow": 1.1, "worker 1": 1.5})
    assert ratios(small, large, "run_peak") == pytest.approx({"flow": 1.5})  # only where both measured it


def test_report_states_each_ratio_against_the_goal():
    runs = {10: {"wall": 5.0, "parts": 48, "procs": {"flow": _p(1000.0, 800.0, 600.0, 790.0)}},
            100: {"wall": 40.0, "procs": {"flow": _p(1100.0, 900.0, 600.0, 880.0)}}}
    text = "\n".join(report_lines("threads", runs))
    assert "threads:" in text
    assert "10 SAEs: evaluate wall    5.0 s (0.50 s per SAE, 48 (unit, task) results)" in text
    assert "100 SAEs: evaluate wall   40.0 s (0.40 s per SAE)" in text
    assert "flow peak 100/10: 1.10x (+100 MiB); during the run 1.12x; RSS after the run 1.11x" in text
    assert "largest 1.10x: MET" in text
    runs[100]["procs"]["flow"]["peak"] = 1300.0
    assert "largest 1.30x: NOT MET" in "\n".join(report_lines("threads", runs))
    one = "\n".join(report_lines("local:2", {10: runs[10]}))  # one count: figures, no ratio
    assert "largest" not in one and "peak RSS 1000 MiB" in one
