"""The fit flow on the tiny zoo: quality.parquet with the documented columns, dictionaries that reload."""

from __future__ import annotations

import polars as pl
import pytest

from sage_core.attribution import LocateConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fit_flow_outputs(tiny_zoo):
    from flows.fit import fit_ground_truth
    from flows.settings import results_in
    from storage.ground_truth import load_dictionary
    from storage.home import SageHome

    home, cfg, *_ = tiny_zoo
    lcfg = LocateConfig(n_pairs=8, n_validate_top=2, n_validate_random=1, ig_steps=2)
    with results_in(SageHome(home)):
        out = fit_ground_truth(cfg=cfg, locate_cfg=lcfg, home=str(home), per_group=1)
    q = pl.read_parquet(out["quality"])
    assert {"task", "attribute", "hook", "head", "role", "method", "sufficiency", "necessity", "edit_accuracy",
            "no_intervention", "n_test"} <= set(q.columns)
    assert set(q["method"].unique()) == {"mean", "mse", "weighted"}
    assert set(q["task"].unique()) == set(cfg.tasks)
    parts = list((home / "ground_truth" / "parts").glob("*/mse.safetensors"))
    assert parts
    dic = load_dictionary(parts[0])
    assert dic.method == "mse" and dic.attributes
