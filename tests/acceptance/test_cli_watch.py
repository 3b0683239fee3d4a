"""`sage watch` as a user runs it: bad sources are one line before any work; a dry run lists what is new and
writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.acceptance.cli import one_line_error, run_in_process

pytestmark = pytest.mark.acceptance


@pytest.mark.parametrize("args, says", [
    ([], "no --source given"),
    (["--source", "nowhere:/x"], "unknown source kind 'nowhere'"),
    (["--source", "dir:"], "cannot read source"),
    (["--source", "dir:/no/such/folder"], "no folder there"),
    (["--source", "yaml:/no/such.yaml"], "no YAML file there"),
    (["--source", "registry::"], "an empty pattern list"),
])
def test_bad_sources_are_one_line(tmp_path, args, says):
    r = run_in_process(["watch", *args], tmp_path / "home")
    assert r.returncode == 2 and one_line_error(r), r.stdout
    assert says in r.stdout
    assert not (tmp_path / "home").exists()  # nothing written


def _sae_dir(path, model="sage-test", d_in=32, d_sae=64):
    path.mkdir(parents=True)
    torch.manual_seed(0)
    save_file({"W_enc": torch.randn(d_in, d_sae), "W_dec": torch.randn(d_sae, d_in), "b_enc": torch.zeros(d_sae),
               "b_dec": torch.zeros(d_in)}, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"model_name": model, "hook_name": "blocks.0.hook_resid_post"}}))


def test_a_dry_run_lists_what_is_new_and_writes_nothing(tmp_path):
    inbox = tmp_path / "inbox"
    _sae_dir(inbox / "lab-sae-a")
    _sae_dir(inbox / "lab-sae-b", model="no-such-model")
    home = tmp_path / "home"
    # in this process (the session's Prefect server, torch imported once): a subprocess spends its time importing
    r = run_in_process(["watch", "--tiny", "--dry-run", "--source", f"dir:{inbox}"], home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 SAE(s) listed, 2 new" in r.stdout
    assert "lab-sae-a" in r.stdout and "lab-sae-b" in r.stdout and "never seen" in r.stdout
    assert not home.exists() or not any(home.iterdir()), sorted(map(str, home.rglob("*")))
