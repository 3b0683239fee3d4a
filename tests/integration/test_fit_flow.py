"""The fit flow on the tiny zoo: quality.parquet with the documented columns, dictionaries that reload."""

from __future__ import annotations

import pytest

from sage_core.locate.attribution import LocateConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fit_flow_outputs(tiny_zoo):
    from flows.fit import fit_ground_truth
    from flows.settings import results_in
    from sage_core.ground_truth.sections import CrossSection
    from storage.ground_truth import load_dictionary, read_quality
    from storage.home import SageHome
    from storage.refs import GroundTruthRef
    from tasks import loaded

    home, cfg, *_ = tiny_zoo
    # a seed no other test of the session uses: this search and fit compute (no cache hit), so their reads count
    lcfg = LocateConfig(n_pairs=8, n_validate_top=2, n_validate_random=1, ig_steps=2, seed=7)
    loaded.clear()
    with results_in(SageHome(home)):
        out = fit_ground_truth(cfg=cfg, locate_cfg=lcfg, home=str(home), per_group=1)
    # location search, captures and fits share one read of the model (issue #16 item 4)
    assert loaded.LOADS["model"] == 1, dict(loaded.LOADS)
    assert isinstance(out, GroundTruthRef) and out.parts
    assert {p.task for p in out.parts} == set(cfg.tasks) and all(isinstance(p.section, CrossSection) for p in out.parts)
    q = read_quality(SageHome(home).at(out))
    assert {"task", "attribute", "hook", "head", "role", "method", "sufficiency", "necessity", "edit_accuracy",
            "no_intervention", "n_test"} <= set(q.columns)
    assert set(q["method"].unique()) == {"mean", "mse", "weighted"}
    assert set(q["task"].unique()) == set(cfg.tasks)
    parts = list((home / "ground_truth" / "parts").glob("*/mse.safetensors"))
    assert parts
    dic = load_dictionary(parts[0])
    assert dic.method == "mse" and dic.attributes


def test_a_cross_section_absent_from_the_store_is_refused(tiny_zoo):
    from sage_core.ground_truth.sections import CrossSection
    from storage.activations import ActivationStore
    from storage.atomic import StoreError
    from storage.hashing import file_hash
    from storage.home import SageHome
    from storage.refs import DatasetRef, StoreRef
    from storage.zoo import find_model
    from tasks.fit import fit_section

    home, cfg, *_ = tiny_zoo
    prompts = {file_hash(p): p for p in (home / "datasets" / "ioi").glob("*/prompts.parquet")}
    absent = "blocks.0.hook_resid_mid"  # a hook of the model that no location search selects
    # the fit's capture (an evaluation's capture may hold it: an SAE family projected across it needs it)
    store = next(s for p in sorted((home / "activations").glob("*/*.zarr"))
                 if (s := ActivationStore.open(p)).attrs.get("dataset_hash") in prompts and absent not in s.hooks)
    dataset = DatasetRef(path=str(prompts[store.attrs["dataset_hash"]].relative_to(home)),
                         hash=store.attrs["dataset_hash"], task="ioi")
    with pytest.raises(StoreError, match="is not in the store .*capture that hook"):
        fit_section.fn(find_model(SageHome(home), cfg.model.name), dataset,
                       StoreRef(path=str(store.path.relative_to(home)), hash="x", n_chunks=store.n_chunks,
                                model_hash=store.attrs["model_hash"], dataset_hash=store.attrs["dataset_hash"]),
                       CrossSection(hook=absent, role="END"), ["IO", "S", "Pos"], ["mean"], str(home))
