"""The projection arithmetic of benchmarks/scale.py against figures computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.scale_projection import count_registry, growth_table, human, n_units, projected_wall, registry_wall


def test_units_are_saes_and_controls_times_tasks():
    assert n_units(10, 4) == 48  # (10 + 2) x 4
    assert n_units(0, 1) == 2  # the controls alone
    assert n_units(5, 3, controls=0) == 15


def test_projected_wall_by_hand():
    # 12 s start-up, 48 units at 0.5 units/s per worker on 4 workers: 12 + 48 / 2 = 36 s
    assert projected_wall(12.0, 48, 4, 0.5) == pytest.approx(36.0)
    # one worker: 12 + 96 = 108 s
    assert projected_wall(12.0, 48, 1, 0.5) == pytest.approx(108.0)


def test_registry_wall_by_hand():
    # 90 s fixed, 87 SAEs at 20 s each: 1 GPU 90 + 1740 = 1830 s; 8 GPUs 90 + 217.5 = 307.5 s
    assert registry_wall(90.0, 87, 20.0, 1) == pytest.approx(1830.0)
    assert registry_wall(90.0, 87, 20.0, 8) == pytest.approx(307.5)


@pytest.mark.parametrize("bad", [lambda: projected_wall(1, 10, 0, 1.0), lambda: projected_wall(1, 10, 1, 0.0),
                                 lambda: registry_wall(1, 10, 1.0, 0), lambda: n_units(1, 0)])
def test_nonsense_figures_are_refused(bad):
    with pytest.raises(ValueError):
        bad()


def test_human_units():
    assert human(5.04) == "5.0 s"
    assert human(300) == "5.0 min"
    assert human(9000) == "2.5 h"


def test_growth_table_cells():
    lines = growth_table(10.0, 1.0, saes=(8,), tasks=(2,), workers=(1, 4))
    # units (8 + 2) x 2 = 20: 1 worker 10 + 20 = 30 s, 4 workers 10 + 5 = 15 s
    assert lines[2].split() == ["8", "2", "20", "|", "30.0", "s", "|", "15.0", "s"]


def test_registry_count_keeps_the_model_and_the_hook_kind():
    entry = lambda model, ids: SimpleNamespace(model=model, saes_map={i: i for i in ids})  # noqa: E731
    directory = {
        "res": entry("gpt2-small", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]),
        "split": entry("gpt2-small", ["blocks.8.hook_resid_pre_768"]),
        "mlp": entry("gpt2-small", ["blocks.0.hook_mlp_out"]),
        "other": entry("pythia-70m", ["blocks.0.hook_resid_post"]),
    }
    assert count_registry("gpt2-small", "resid", directory) == {"res": 2, "split": 1}
