"""The locate flow on the tiny zoo: ranking.parquet with the documented columns, validation, heatmaps, caching."""

from __future__ import annotations

import polars as pl
import pytest

from sage_core.locate.attribution import LocateConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_locate_flow_outputs(tiny_zoo):
    from flows.locate import locate
    from flows.settings import results_in
    from storage.home import SageHome
    from storage.locations import read_ranking, read_validation
    from storage.refs import LocationsRef

    home, cfg, *_ = tiny_zoo
    lcfg = LocateConfig(n_pairs=8, n_validate_top=3, n_validate_random=2, ig_steps=2)
    with results_in(SageHome(home)):
        out = locate(cfg=cfg, locate_cfg=lcfg, home=str(home))
        again = locate(cfg=cfg, locate_cfg=lcfg, home=str(home))
    assert isinstance(out, LocationsRef) and out.hash == again.hash
    ranking = read_ranking(SageHome(home).at(out))
    assert {"task", "attribute", "hook", "layer", "head", "role", "atp", "rank", "selected", "patch_effect"} <= set(
        ranking.columns)
    assert set(ranking["task"].unique()) == set(cfg.tasks)
    assert set(ranking.filter(pl.col("task") == "ioi")["attribute"].unique()) == {"IO", "S", "Pos"}
    heads = ranking.filter(pl.col("kind") == "head")
    assert heads["head"].null_count() == 0 and ranking.filter(pl.col("kind") != "head")["head"].null_count() > 0
    per = ranking.group_by("task", "attribute", "group").agg(pl.col("selected").sum().alias("n"),
                                                              pl.col("patch_effect").is_not_null().sum().alias("v"))
    assert (per["n"] >= 1).all() and (per["n"] <= lcfg.cap).all() and (per["v"] == 5).all()
    val = read_validation(SageHome(home).at(out))
    assert len(val) == 5 and {"sublayer_spearman", "residual_spearman", "sublayer_recovered"} <= set(val.columns)
    pngs = list((home / "locations").glob("*/heatmaps/*.png"))
    assert len(pngs) >= 5


def test_locate_flow_unknown_attribute(tiny_zoo):
    from flows.locate import locate

    home, cfg, *_ = tiny_zoo
    with pytest.raises(ValueError, match="no attribute matches"):
        locate(cfg=cfg, locate_cfg=LocateConfig(), home=str(home), attributes=["colour"])
