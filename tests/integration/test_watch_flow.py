"""The watch flow on the tiny zoo: a watched folder's new SAE is evaluated and ranked, an unchanged copy of weights
already scored is not, SAEs of models that cannot be loaded here are skipped with the reason (the run goes on),
unreadable entries (a deeply nested cfg.json among them) are reported while the rest are evaluated, the next run
evaluates nothing, a dry run writes nothing, the SAEs a killed watch run claimed are evaluated by the next run at once,
and the "new this run" artifact names the evaluated SAE's rank."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from sage_core.locate.attribution import LocateConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LCFG = LocateConfig(n_pairs=8, n_validate_top=2, n_validate_random=1, ig_steps=2)  # as test_evaluate_flow: its cache
SAE = "blocks.0.hook_resid_post--topk-64"


def _cfg(zoo_cfg):
    from sage_core.config import EvaluateConfig, WatchConfig

    return WatchConfig(evaluate=EvaluateConfig(zoo=zoo_cfg, locate=LCFG, per_group=1, core_sequences=32,
                                                min_task_accuracy=0.0))


def _copy(src: Path, dst: Path, scale: float | None = None, model: str | None = None) -> Path:
    shutil.copytree(src, dst)
    (dst / "_COMPLETE.json").unlink(missing_ok=True)
    if scale is not None:
        w = load_file(dst / "sae_weights.safetensors")
        w["W_dec"] = w["W_dec"] * scale
        save_file(w, str(dst / "sae_weights.safetensors"))
    if model is not None:
        cfg = json.loads((dst / "cfg.json").read_text())
        cfg["metadata"]["model_name"] = model
        (dst / "cfg.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def watched(tiny_zoo, tmp_path_factory):
    """The zoo SAE evaluated by `evaluate` (recorded in the ledger), then a folder with copies of it: unchanged,
    changed, and two of models that cannot be loaded here, plus an entry that is not an SAE and one whose cfg.json
    nests deeper than a JSON parser goes (issue 27 item 10: it failed the whole folder)."""
    from flows.evaluate import run_evaluate
    from storage.home import SageHome

    home, zoo_cfg, *_ = tiny_zoo
    cfg = _cfg(zoo_cfg)
    run_evaluate(cfg.evaluate.model_copy(update={"saes": (f"zoo:{SAE}",)}), home=str(home))
    inbox = tmp_path_factory.mktemp("inbox")
    src = SageHome(home).sae_dir(zoo_cfg.model.name, SAE)
    _copy(src, inbox / "same")
    _copy(src, inbox / "changed", scale=0.8)
    _copy(src, inbox / "of-gpt2", model="gpt2-small")
    _copy(src, inbox / "of-nothing", model="no-such-model")
    (inbox / "junk").mkdir()
    (inbox / "junk" / "cfg.json").write_text("{not json")
    (inbox / "junk" / "sae_weights.safetensors").write_bytes(b"")
    _copy(src, inbox / "deep")
    (inbox / "deep" / "cfg.json").write_text("[" * 100_000)
    return home, cfg, inbox


def _watch(home, cfg, inbox, dry_run=False):
    from flows.watch import run_watch

    return run_watch([f"dir:{inbox}"], cfg=cfg, dry_run=dry_run, home=str(home))


def _by_dir(rows):
    return {Path(r["sae_id"]).name: r for r in rows}


def test_a_dry_run_lists_what_is_new_and_writes_nothing(watched, monkeypatch):
    from storage.home import SageHome
    from storage.ledger import Ledger

    home, cfg, inbox = watched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = Ledger.of(SageHome(home)).saes()
    out = _watch(home, cfg, inbox, dry_run=True)
    rows = _by_dir(out["not_new"])
    assert rows["changed"]["status"] == "evaluate" and rows["same"]["status"] == "same-weights"
    assert out["outcomes"] == [] and out["runs"] == []
    assert Ledger.of(SageHome(home)).saes().equals(before)


def test_new_saes_are_evaluated_the_rest_skipped_or_left(watched, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from report.watch import WATCH_ARTIFACT_KEY
    from storage.home import SageHome
    from storage.ledger import Ledger

    home, cfg, inbox = watched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # gpt2's weights are not here and the hub is out of reach
    out = _watch(home, cfg, inbox)
    done = _by_dir(out["outcomes"])
    assert set(done) == {"changed", "of-gpt2", "of-nothing"}, done
    assert done["changed"]["status"] == "evaluated" and done["changed"]["run"] in out["runs"]
    assert done["of-gpt2"]["status"] == "skipped" and "not in the local Hugging Face cache" in done["of-gpt2"]["reason"]
    assert done["of-nothing"]["status"] == "skipped" and "nor a TransformerLens model" in done["of-nothing"]["reason"]
    left = _by_dir(out["not_new"])
    assert left["same"]["status"] == "same-weights" and SAE in left["same"]["reason"]
    assert [u["path"] for u in out["unreadable"]] == [str(inbox / "deep"), str(inbox / "junk")]
    assert out["unreadable"][0]["reason"].startswith("cfg.json is nested too deeply") and out["source_errors"] == []
    assert out["counts"] == {"evaluated": 1, "failed": 0, "skipped": 2, "same-weights": 1, "unchanged": 0,
                                  "busy": 0, "deferred": 0}

    led = Ledger.of(SageHome(home))
    rows = _by_dir(led.saes().to_dicts())
    assert {k: r["status"] for k, r in rows.items()} == {"same": "evaluated", "changed": "evaluated",
                                                        "of-gpt2": "skipped", "of-nothing": "skipped"}
    assert rows["changed"]["run"] == done["changed"]["run"] and rows["same"]["sae"] == SAE
    assert rows["same"]["content_hash"] != rows["changed"]["content_hash"]
    ev = led.evaluations().filter(_hash_is(rows["changed"]["content_hash"]))
    assert ev.height == 1 and ev["source"][0] == f"dir:{inbox}"  # the watch names where it came from

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[WATCH_ARTIFACT_KEY])))
    md = max(arts, key=lambda a: a.created).data
    assert re.search(r"^\| changed \| sage-test \| [^|]+ \| \w+ \| \d+ of \d+ \| [0-9.]+ \| run-", md, re.M), md
    assert "not in the local Hugging Face cache" in md
    # names a person reads (issue #26 item 5): the evaluation by the SAEs it scores, task runs without a uuid
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        names = {r.name for r in runs} | {t.name for t in client.read_task_runs()}
    assert "evaluate sage-test: changed (watch)" in names, sorted(names)
    uuid_like = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert not [n for n in names if uuid_like.search(n)], sorted(n for n in names if uuid_like.search(n))

    again = _watch(home, cfg, inbox)  # the next run evaluates nothing
    assert again["counts"]["evaluated"] == 0 and again["runs"] == []
    assert _by_dir(again["not_new"])["changed"]["status"] == "unchanged"
    assert {Path(o["sae_id"]).name for o in again["outcomes"]} == {"of-gpt2", "of-nothing"}  # looked at again
    assert all(o["status"] == "skipped" for o in again["outcomes"])


def _hash_is(h: str):
    import polars as pl

    return pl.col("content_hash") == h


def test_a_registry_sae_in_the_local_hf_cache_is_evaluated_through_from_pretrained(watched, tmp_path, monkeypatch):
    """The registry source end to end, offline: a release naming an SAE of the built-in model (its files in a Hugging
    Face cache built here) is listed with its content hash, loaded by `SAE.from_pretrained`, scored and recorded."""
    from huggingface_hub import constants
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    from storage.home import SageHome
    from storage.ledger import Ledger
    from storage.sae_sources import _dir_weights_hash
    from tests.acceptance.hf_cache import spy_from_pretrained, write_hub_files

    home, cfg, _ = watched
    src = _copy(SageHome(home).sae_dir(cfg.evaluate.zoo.model.name, SAE), tmp_path / "published", scale=1.25)
    write_hub_files(tmp_path / "hf", "sage-lab/saes", {f"l0/{f}": src / f for f in ("cfg.json",
                                                                                    "sae_weights.safetensors")})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(get_pretrained_saes_directory(), "sage-lab-res", PretrainedSAELookup(
        release="sage-lab-res", repo_id="sage-lab/saes", model=cfg.evaluate.zoo.model.name, conversion_func=None,
        saes_map={"layer0": "l0"}, expected_var_explained={}, expected_l0={}, neuronpedia_id={},
        norm_scaling_factor={}, config_overrides=None))
    calls = spy_from_pretrained(monkeypatch)
    from flows.watch import run_watch

    out = run_watch([f"registry:{cfg.evaluate.zoo.model.name}:sage-lab-*"], cfg=cfg, home=str(home))
    [o] = out["outcomes"]
    assert (o["status"], o["spec"], o["content_hash"]) == ("evaluated", "sage-lab-res/layer0", _dir_weights_hash(src))
    assert ("sage-lab-res", "layer0") in calls
    ev = Ledger.of(SageHome(home)).evaluations().filter(_hash_is(_dir_weights_hash(src)))
    assert ev["source"].to_list() == [f"registry:{cfg.evaluate.zoo.model.name}:sage-lab-*"]


_CLAIMER = """
import sys, time
from sage_core.watch.sources import parse_source
from storage.home import SageHome
from storage.ledger import Ledger
from storage.watch_sources import list_source
found = list_source(parse_source(sys.argv[1]), SageHome(sys.argv[2])).found
print([d.action for d in Ledger.of(SageHome(sys.argv[2])).claim(found, "killed-watch", lease_hours=12)], flush=True)
time.sleep(600)
"""


def test_the_saes_a_killed_watch_claimed_are_evaluated_by_the_next_run(watched, tmp_path, monkeypatch):
    """Issue 27 item 8. Before: a watch run killed after claiming its new SAEs kept them busy for the 12-hour lease;
    the rerun finished with nothing evaluated. Now the claim names its process: the rerun on this host sees it is gone
    and evaluates them at once."""
    import signal
    import subprocess
    import sys

    from storage.home import SageHome
    from tests.acceptance.cli import ROOT

    home, cfg, _ = watched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inbox = tmp_path / "claimed"
    _copy(SageHome(home).sae_dir(cfg.evaluate.zoo.model.name, SAE), inbox / "orphan", scale=0.7)
    proc = subprocess.Popen([sys.executable, "-c", _CLAIMER, f"dir:{inbox}", str(home)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "['evaluate']"
        busy = _watch(home, cfg, inbox, dry_run=True)  # its process lives: the SAE is its
        assert [r["status"] for r in busy["not_new"]] == ["busy"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = _watch(home, cfg, inbox)
    [o] = out["outcomes"]
    assert o["status"] == "evaluated" and o["run"] in out["runs"], o
    assert out["counts"]["busy"] == 0
