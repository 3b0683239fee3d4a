"""`sage watch` as a user runs it: bad sources are one line before any work; a dry run lists what is new and
writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

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
    # in this process (torch imported once): a subprocess spends its time importing. No Prefect: an API that answers
    # nothing (a closed port) does not matter to a dry run, which starts no server and creates no flow run
    r = run_in_process(["watch", "--tiny", "--dry-run", "--source", f"dir:{inbox}"], home,
                       env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 SAE(s) listed, 2 new" in r.stdout
    assert "lab-sae-a" in r.stdout and "lab-sae-b" in r.stdout and "never seen" in r.stdout
    assert not home.exists() or not any(home.iterdir()), sorted(map(str, home.rglob("*")))


def _tree(root):
    """Every path under `root` with its kind, mode, bytes' hash and mtime: what a change to the data root would show."""
    import hashlib
    import os

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = hashlib.sha256(Path(p).read_bytes()).hexdigest() if name in filenames else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def _killed_claimer(ledger_path, inbox):
    """Claims of a watch run whose process was then killed (issue 27 item 8): what a rerun must take over."""
    import signal
    import subprocess
    import sys

    from tests.acceptance.cli import ROOT

    code = ("import sys, time\nfrom sage_core.watch.sources import parse_source\nfrom storage.home import SageHome\n"
            "from storage.ledger import Ledger\nfrom storage.watch_sources import list_source\n"
            "found = list_source(parse_source('dir:' + sys.argv[2]), SageHome(sys.argv[3])).found\n"
            "print([d.action for d in Ledger(sys.argv[1]).claim(found, 'killed-watch', lease_hours=12)], flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ledger_path), str(inbox), str(ledger_path.parent)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "['evaluate', 'evaluate']"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_dry_run_reads_a_read_only_data_root_and_changes_nothing(tmp_path):
    """Before: `sage watch --dry-run` on a data root it may not write failed in one line ("the ledger ... could not be
    used (OperationalError: unable to open database file)"). Now the dry run reads the ledger read-only: the data root
    is made read-only for the CLI's process for real (chmod a-w, and where the tests run as root, whom chmod does not
    stop, root's file-permission overrides dropped with setpriv; a probe write must fail), the dry run lists what is
    new (the claims of a killed watch run included: item 8), and every path under the data root is as it was
    (bytes, mode, mtime; nothing added, no SQLite -wal/-shm left)."""
    import os
    import shutil
    import subprocess
    import sys

    from storage.home import SageHome
    from storage.ledger import Ledger
    from tests.acceptance import cli

    inbox, home = tmp_path / "inbox", tmp_path / "home"
    _sae_dir(inbox / "lab-sae-a")
    _sae_dir(inbox / "lab-sae-b", model="no-such-model")
    home.mkdir()
    led = Ledger.of(SageHome(home))
    led.record_run("run-0", "sage-test", [{"content_hash": "0123456789abcdef", "sae": "older", "spec": "zoo:older",
                                           "status": "evaluated"}])
    _killed_claimer(led.path, inbox)
    assert sorted(p.name for p in home.iterdir()) == ["ledger.sqlite"]

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: the data root cannot be made read-only to the CLI")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, **({"PREFECT_API_URL": cli.API_URL} if cli.API_URL else {}), "SAGE_HOME": str(home),
           "COLUMNS": "400"}
    for p in [home, *home.iterdir()]:
        p.chmod(p.stat().st_mode & ~0o222)
    before = _tree(home)
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(home / 'probe')!r}, 'w')"],
                               capture_output=True, text=True, env=env)
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, "the data root is not read-only"
        r = subprocess.run([*prefix, *cli.SAGE, "watch", "--tiny", "--dry-run", "--source", f"dir:{inbox}"],
                           capture_output=True, text=True, env=env, cwd=cli.ROOT, timeout=900)
        after = _tree(home)
    finally:
        for p in [home, *home.iterdir()]:
            p.chmod(p.stat().st_mode | 0o200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 SAE(s) listed, 2 new" in r.stdout, r.stdout
    assert "watch run killed-watch that claimed it" in r.stdout and "is no longer running" in r.stdout, r.stdout
    assert after == before
