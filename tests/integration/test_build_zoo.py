"""The build-zoo flow on a toy config: outputs in the documented layout, a rerun that is all cache hits, and a zoo that
plain transformer_lens and SAELens load."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from storage.refs import ZooRef

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _task_run_states(flow_state, tries: int = 120, by_task: bool = False) -> list:
    """Final state names of the flow run's task runs (task states reach the server asynchronously: wait for them)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        for _ in range(tries):
            runs = client.read_task_runs(flow_run_filter=flt)
            names = [r.state.name if r.state else "Pending" for r in runs]
            if names and not {"Running", "Pending", "Scheduled"} & set(names):
                break
            time.sleep(0.5)
    if by_task:
        return sorted((r.name.split(" ", 1)[0], r.state.name if r.state else "Pending") for r in runs)
    return names


@pytest.fixture(scope="module")
def built(tiny_zoo):
    return tiny_zoo


def test_layout_matches_design(built):
    home, cfg, first, _ = built
    assert first.is_completed()
    out = first.result()
    assert isinstance(out, ZooRef)
    model_dir = home / "zoo" / cfg.model.name / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    for ds in out.datasets:
        # references hold paths relative to SAGE_HOME (a moved data root still reads)
        assert ds.path.startswith(f"datasets/{ds.task}/") and ds.path.endswith("prompts.parquet")
        df = pl.read_parquet(home / ds.path)
        assert {"prompt_id", "task", "split", "text", "tokens", "answer_token", "cf_answer_token", "pair_of",
                "pair_attr"} <= set(df.columns)
    for s in out.saes:
        cfg_json = json.loads((home / "zoo" / cfg.model.name / "saes" / s.name / "cfg.json").read_text())
        assert cfg_json["metadata"]["hook_name"] == s.name.split("--")[0]
    sae_table = pl.read_parquet(home / out.sae_eval.path)
    assert len(sae_table) == len(out.saes) and sae_table["explained_variance"].is_finite().all()


def test_rerun_is_all_cache_hits(built):
    *_, first, second = built
    first_states, second_states = _task_run_states(first), _task_run_states(second, by_task=True)
    assert "Completed" in first_states
    # every task a cache hit; the flow's own record, dropped before this run, written again
    assert ("record-zoo", "Completed") in second_states
    assert {s for task, s in second_states if task != "record-zoo"} == {"Cached"}, second_states
    assert first.result().model.hash == second.result().model.hash


def test_a_rerun_with_the_flows_record_whole_returns_it_and_runs_no_task(built):
    """The one rule for "done" at flow level: the zoo flow checks its own record first (no other flow computes its
    key), and a whole build costs no task run, not even a cache lookup."""
    from flows.build_zoo import build_zoo

    home, cfg, first, _ = built
    third = build_zoo(cfg=cfg, home=str(home), return_state=True)
    assert third.is_completed() and third.result() == first.result()
    assert _task_run_states(third, tries=6) == []


def test_zoo_loads_with_plain_transformer_lens_and_saelens(built):
    home, cfg, first, _ = built
    sae_dir = str(home / first.result().saes[0].path)
    script = f"""
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from sae_lens import SAE
d = {str(home / "zoo" / cfg.model.name / "model")!r}
cfg = json.load(open(d + "/config.json")); cfg["dtype"] = getattr(torch, cfg["dtype"])
model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=AutoTokenizer.from_pretrained(d + "/tokenizer"))
model.load_state_dict(load_file(d + "/model.safetensors"))
sae = SAE.load_from_disk({sae_dir!r})
_, cache = model.run_with_cache("When Mary and John went to the store , John gave a drink to")
f = sae.encode(cache[sae.cfg.metadata.hook_name])
assert f.shape[-1] == sae.cfg.d_sae and torch.isfinite(sae.decode(f)).all()
assert not [m for m in sys.modules if m.split(".")[0] in ("sage_core", "storage", "tasks", "flows")]
print("OK", tuple(f.shape))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("OK")


def test_an_sae_trained_from_other_settings_is_retrained_and_swapped_whole(built, tmp_path):
    """An SAE's directory name says only hook, architecture and width: one trained with other settings (or on another
    model) is retrained and replaced once the new one is whole; a current one is left untouched."""
    import shutil

    from sage_core.zoo.plan import plan_zoo
    from storage.atomic import read_marker
    from storage.home import SageHome
    from tasks import zoo as zt

    home, cfg, first, _ = built
    out = first.result()
    spec = plan_zoo(cfg).specs[0]
    acts = zt.capture_sae_activations.fn(cfg, out.model, out.corpus, plan_zoo(cfg).hooks, str(home))
    mine = SageHome(tmp_path)
    shutil.copytree(home / acts.path, tmp_path / acts.path)  # references name files relative to SAGE_HOME
    src = SageHome(home).sae_dir(cfg.model.name, spec.name)
    shutil.copytree(src, mine.sae_dir(cfg.model.name, spec.name))
    path = mine.sae_dir(cfg.model.name, spec.name)

    before = read_marker(path)
    zt.train_sae.fn(spec, cfg, out.model, acts, str(tmp_path))
    assert read_marker(path) == before, "a current SAE must not be retrained"

    changed = spec.model_copy(update={"l1_coefficient": spec.l1_coefficient * 2, "lr": 2e-3})
    zt.train_sae.fn(changed, cfg, out.model, acts, str(tmp_path))
    after = read_marker(path)
    assert after["spec"] == changed.model_dump() and after["written_at"] > before["written_at"]
    assert not list(path.parent.glob(f"{path.name}.*")), "no partial or stale sibling may remain"
    zt.train_sae.fn(changed, cfg, out.model, acts, str(tmp_path))
    assert read_marker(path) == after


def test_one_build_reads_the_model_once_and_hashes_its_weights_once(prefect_harness, tmp_path, monkeypatch):
    """Load once (issue #16 item 4): within one zoo build the trained model is read from disk once (the tasks that
    need it share it), and its weights are hashed once however many tasks and records name it."""
    import sys
    from pathlib import Path

    from flows.build_zoo import build_zoo, zoo_if_whole
    from flows.settings import results_in
    from sage_core.config import ZooConfig
    from storage import hashing
    from storage.home import SageHome
    from tasks import loaded

    hashed: list[str] = []
    real = hashing.file_hash

    def counting(path, *args, **kwargs):
        if Path(path).name == "model.safetensors":
            hashed.append(str(path))
        return real(path, *args, **kwargs)

    for name, module in list(sys.modules.items()):  # every module that took file_hash by name
        if name.split(".")[0] in hashing.PROJECT_PACKAGES and getattr(module, "file_hash", None) is real:
            monkeypatch.setattr(module, "file_hash", counting)
    real_content = hashing.safetensors_content_hash  # a safetensors file's canonical content hash reads it whole too

    def counting_content(path, *args, **kwargs):
        if Path(path).name == "model.safetensors":
            hashed.append(str(path))
        return real_content(path, *args, **kwargs)

    monkeypatch.setattr(hashing, "safetensors_content_hash", counting_content)
    loaded.clear()
    cfg = ZooConfig.tiny()
    with results_in(SageHome(tmp_path)):
        state = build_zoo(cfg=cfg, home=str(tmp_path), return_state=True)
    assert state.is_completed()
    assert loaded.LOADS["model"] == 1, dict(loaded.LOADS)
    assert len(hashed) == 1, hashed
    assert zoo_if_whole(cfg, SageHome(tmp_path)) == state.result() and len(hashed) == 1, hashed
    # --refresh recomputes every task (none answered from its cache record) and the zoo still reads as whole
    with results_in(SageHome(tmp_path)):
        again = build_zoo(cfg=cfg, home=str(tmp_path), refresh=True, return_state=True)
    assert again.is_completed(), again
    states = _task_run_states(again)
    assert states and "Cached" not in states, states
    assert zoo_if_whole(cfg, SageHome(tmp_path)) is not None
