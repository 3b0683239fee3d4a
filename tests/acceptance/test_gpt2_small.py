"""`sage evaluate --model gpt2 --saes <release>/<id>,...` at GPT-2 small's real shape, offline (issue 24 item 6): the
real `HookedTransformer.from_pretrained("gpt2")` (12 layers, d_model 768, vocabulary 50257, GPT-2's real tokenizer,
random weights) and `SAE.from_pretrained` of a width-24576 SAELens release registered for the test, with
HF_HUB_OFFLINE=1 and the core metrics on a local text. Random weights do no task: at the default bar every task is
measured and reported as not done, and only the core metrics are computed; with the bar lowered every stage runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.reports import read_report
from tests.acceptance import cli
from tests.acceptance.hf_cache import write_sae_release
from tests.acceptance.test_cli_pretrained import write_text

# minutes on a 2-core CPU: `make bench` runs these (`pytest -m real_shape`), `make test` leaves them out
pytestmark = [pytest.mark.acceptance, pytest.mark.slow, pytest.mark.real_shape]

RELEASE = "sage-test-gpt2-small-24576"
HOOKS = ("blocks.0.hook_resid_pre", "blocks.5.hook_resid_post", "blocks.11.hook_resid_post")
SAES = [(h.replace("blocks.", "l").replace(".hook_", "-"), h, 768, 24576, "standard") for h in HOOKS]
# the `sage` CLI with the release added to SAELens' registry (the registry is a module-level dict: a subprocess
# registers it itself)
SAGE_WITH_RELEASE = """
import json, sys
from tests.acceptance.hf_cache import registered_release
entry = json.loads(sys.argv[1])
sys.argv = ["sage", *sys.argv[2:]]
with registered_release(entry):
    from flows.cli import app
    app()
"""


def _sage(entry: dict, args: list[str], home: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    mine = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env = {**mine, **({"PREFECT_API_URL": cli.API_URL} if cli.API_URL else {}), **env, "SAGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", SAGE_WITH_RELEASE, json.dumps(entry), *args], capture_output=True,
                          text=True, timeout=1500, env=env, cwd=cli.ROOT)


@pytest.fixture(scope="module")
def gpt2_release(gpt2_small_hf, tmp_path_factory):
    root, env = gpt2_small_hf
    entry = write_sae_release(root, RELEASE, "gpt2", SAES, seed=1)
    text = write_text(tmp_path_factory.mktemp("gpt2-text") / "library.txt")
    specs = ",".join(f"{RELEASE}/{s[0]}" for s in SAES)
    base = ["evaluate", "--tiny", "--model", "gpt2", "--saes", specs, "--corpus", f"text:{text}", "--corpus-tokens",
            "1024", "--per-group", "1"]
    return entry, env, base


def _report(r) -> Path:
    return Path(r.stdout.split("report:")[-1].split()[0])


def test_random_gpt2_small_does_no_task_and_its_saes_get_core_metrics(gpt2_release, tmp_path):
    entry, env, base = gpt2_release
    r = _sage(entry, [*base, "--min-task-accuracy", "0.6"], tmp_path / "home", env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    for task in ("ioi", "sva"):  # --tiny's tasks: measured, and below the bar on random weights
        assert f"{task}: not done by gpt2 (accuracy" in out, out
    assert "SAEs against the ground truth" not in out  # no task ran: no leaderboard, the core metrics instead
    assert "core metrics on: text:" in out and "1024 tokens in 8 sequences of 128 tokens" in out, out
    report = _report(r)
    assert read_report(report.parent)[0].height == 0
    text = report.read_text()
    assert "**Tasks on this model:**" in text and "ioi: not done by gpt2" in text
    core = [ln for ln in text.split("## Core metrics")[1].splitlines() if ln.startswith(f"| {RELEASE}/")]
    assert len(core) == len(SAES), text
    for ln in core:  # CE rec., KL, EV, L0, dead share: each measured
        assert "–" not in ln and ln.count("|") == 7, ln
    assert "core metrics of the SAEs of gpt2 (no task ran on it)" in out
    assert sum(f"{RELEASE}/" in ln for ln in r.stdout.splitlines()) == len(SAES), r.stdout  # one row each
    rep = cli.run(["report"], tmp_path / "home", timeout=300)  # the finished run read back says the same
    assert rep.returncode == 0 and "ioi: not done by gpt2" in rep.stdout, rep.stdout + rep.stderr[-2000:]
    assert sum(f"{RELEASE}/" in ln for ln in rep.stdout.splitlines()) == len(SAES), rep.stdout


def test_with_the_bar_lowered_every_stage_runs_at_gpt2_small_shape(gpt2_release, tmp_path):
    entry, env, base = gpt2_release
    r = _sage(entry, [*base, "--tasks", "ioi", "--min-task-accuracy", "0"], tmp_path / "home", env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    assert "ioi: ran on gpt2" in out, out
    report = _report(r)
    scores = read_report(report.parent)[0]
    assert set(scores["task"]) == {"ioi"} and {"control:oracle", "control:random"} <= set(scores["sae"])
    print(r.stdout[-4000:])
