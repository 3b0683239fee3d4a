"""Two SAE specs whose SAEs carry the same name (issue #27 item 2): units and core metrics are keyed by name, so two
different SAEs would be merged into one row. The evaluation refuses them in one line before any work, naming both
specs; the same SAE named twice (same spec, same path or the same content) is evaluated once."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from sage_core.config import EvaluateConfig
from storage.atomic import write_once
from storage.home import SageHome
from storage.sae_names import SAESpecError
from storage.sae_sources import distinct_specs
from tasks.plan import check_inputs

NAME = "blocks.0.hook_resid_pre--topk-64"
MODEL = "sage-tiny"


def _write_sae(d, scale: float = 1.0):
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "metadata": {"hook_name": "blocks.0.hook_resid_pre",
                                                                                "model_name": MODEL}}))
    g = torch.Generator().manual_seed(0)
    save_file({"W_enc": torch.randn(4, 8, generator=g) * scale, "W_dec": torch.randn(8, 4, generator=g)},
              str(d / "sae_weights.safetensors"))
    return d


@pytest.fixture
def home(tmp_path):
    """A data root whose zoo holds NAME (complete, as the zoo build leaves it)."""
    h = SageHome(tmp_path / "home")
    src = _write_sae(tmp_path / "zoo-src")
    with write_once(h.sae_dir(MODEL, NAME), {"key": "k"}, kind="zoo-sae") as tmp:
        for f in src.iterdir():
            shutil.copy(f, tmp / f.name)
    return h


def test_two_different_saes_of_one_name_are_refused_in_one_line(tmp_path, home):
    other = _write_sae(tmp_path / "lab" / NAME, scale=2.0)
    specs = [f"zoo:{NAME}", str(other)]
    with pytest.raises(SAESpecError) as e:
        distinct_specs(specs, home, MODEL)
    msg = str(e.value)
    assert "\n" not in msg and f"zoo:{NAME}" in msg and str(other) in msg and "same name" in msg
    assert "another name" in msg  # how to tell them apart
    # the evaluation's own input check refuses them, before the zoo, the capture or any scoring
    cfg = EvaluateConfig(saes=tuple(specs))
    with pytest.raises(SAESpecError, match="same name"):
        check_inputs(cfg, home, None)


def test_two_directories_of_one_name_are_refused(tmp_path, home):
    a, b = _write_sae(tmp_path / "a" / "x"), _write_sae(tmp_path / "b" / "x", scale=3.0)
    with pytest.raises(SAESpecError, match="same name 'x'"):
        distinct_specs([str(a), str(b)], home, MODEL)


def test_the_same_sae_twice_is_evaluated_once(tmp_path, home):
    copy = tmp_path / "lab" / NAME
    shutil.copytree(home.sae_dir(MODEL, NAME), copy)
    (copy / "_COMPLETE.json").unlink()
    # the same content under another spec, the same spec twice, the same zoo SAE spelled with its model
    assert distinct_specs([f"zoo:{NAME}", str(copy)], home, MODEL) == [f"zoo:{NAME}"]
    assert distinct_specs([str(copy), str(copy), f"zoo:{MODEL}/{NAME}", f"zoo:{NAME}"], home, MODEL) == [str(copy)]
    other = _write_sae(tmp_path / "other")
    assert distinct_specs([str(copy), str(other)], home, MODEL) == [str(copy), str(other)]
    check_inputs(EvaluateConfig(saes=(f"zoo:{NAME}", str(copy))), home, None)  # no refusal


def test_a_zoo_sae_not_built_yet_cannot_be_told_from_a_directory_of_its_name(tmp_path):
    h = SageHome(tmp_path / "empty-home")
    d = _write_sae(tmp_path / "lab" / NAME)
    with pytest.raises(SAESpecError, match="same name"):
        distinct_specs([f"zoo:{NAME}", str(d)], h, MODEL)


def test_two_python_factories_of_one_name_are_refused(monkeypatch):
    monkeypatch.setenv("SAGE_ALLOW_PY_SPECS", "1")
    with pytest.raises(SAESpecError, match="same name 'make'"):
        distinct_specs(["py:lab_a.saes:make", "py:lab_b.saes:make"], SageHome("/nonexistent"), MODEL)
