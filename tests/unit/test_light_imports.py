"""The configs, the typed references and the readers of finished outputs import no TransformerLens or SAELens (~8 s
on this machine): `sage schema`, `sage report`, `sage leaderboard` and every refusal of bad input answer in seconds, and
so does every CLI run of the tests. Checked in a fresh interpreter, where nothing was imported before."""

from __future__ import annotations

import subprocess
import sys

LIGHT = ("sage_core.config", "storage.refs", "storage.records", "storage.reports", "storage.scores",
         "storage.locations", "flows.cli.schema", "flows.cli.report", "flows.cli.leaderboard")
HEAVY = ("transformer_lens", "sae_lens")


def test_configs_references_and_readers_import_no_model_library():
    code = (f"import sys\nfor m in {LIGHT!r}: __import__(m)\n"
            f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", f"imported by {LIGHT}: {r.stdout.strip()}"


def test_the_check_sees_a_heavy_import():
    code = f"import sys\nimport sage_core.zoo.train\nprint(sorted(h for h in {HEAVY!r} if h in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == str(sorted(HEAVY)), r.stdout + r.stderr[-2000:]
