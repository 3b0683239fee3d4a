"""The capture flow on the tiny zoo: one store per task, sharded, cached on a rerun, readable through xarray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_core.model.capture import CaptureRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_capture_flow_sharded_and_cached(tiny_zoo):
    from flows.capture import capture
    from flows.settings import results_in
    from sage_core.model.capture import default_hooks
    from storage.activations import ActivationStore
    from storage.datasets import read_prompts
    from storage.home import SageHome
    from storage.refs import StoreRef
    from storage.zoo import load_model

    home, cfg, first, _ = tiny_zoo
    req = CaptureRequest(hooks=default_hooks(cfg.model.n_layers), chunk_mb=0.01, positions="all")
    with results_in(SageHome(home)):
        out = capture(request=req, cfg=cfg, home=str(home), n_shards=3)
        again = capture(request=req, cfg=cfg, home=str(home), n_shards=3)
    assert list(out) == list(cfg.tasks) and all(isinstance(o, StoreRef) for o in out.values())
    assert [o.hash for o in out.values()] == [o.hash for o in again.values()]
    model = load_model(home / "zoo" / cfg.model.name / "model")
    for o, ds in zip(out.values(), first.result().datasets, strict=True):
        assert o.path.startswith("activations/")  # relative to SAGE_HOME
        store = ActivationStore.open(home / o.path, expect={"dataset_hash": o.dataset_hash})
        assert store.n_chunks >= 3 and store.n_chunks == o.n_chunks, "shards must have had work"
        df = read_prompts(home / ds.path)
        xr = store.to_xarray()
        assert list(xr["prompt_id"].values) == df["prompt_id"].to_list()
        toks = df["tokens"].to_list()[-1]
        _, cache = model.run_with_cache(torch.tensor([toks]))
        got = xr["blocks.0.hook_resid_post"].isel(prompt=-1).values[: len(toks)]
        np.testing.assert_allclose(got, cache["blocks.0.hook_resid_post"][0].numpy(), rtol=1e-5, atol=1e-5)
    changed = CaptureRequest(hooks=("blocks.0.hook_resid_post",), chunk_mb=0.05)
    with results_in(SageHome(home)):
        other = capture(request=changed, cfg=cfg, home=str(home), n_shards=1)
    assert {o.path for o in other.values()}.isdisjoint({o.path for o in out.values()}), "a changed request: a new store"
