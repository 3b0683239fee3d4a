"""The configs, the typed references and the readers of finished outputs import no TransformerLens or SAELens (~8 s
on this machine): `sage schema`, `sage report`, `sage leaderboard` and every refusal of bad input answer in seconds, and
so does every CLI run of the tests. Checked in a fresh interpreter, where nothing was imported before."""

from __future__ import annotations

import json
import subprocess
import sys

LIGHT = ("sage_core.config", "storage.refs", "storage.records", "storage.reports", "storage.scores",
         "storage.locations", "flows.cli.schema", "flows.cli.report", "flows.cli.leaderboard")
HEAVY = ("transformer_lens", "sae_lens")


def _imported(modules: tuple[str, ...], watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter holds after importing `modules`."""
    code = (f"import json, sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(json.dumps(sorted(w for w in {watched!r} if w in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_configs_references_and_readers_import_no_model_library():
    assert _imported(LIGHT, HEAVY) == [], f"imported by {LIGHT}"


def test_the_check_sees_an_import():
    assert _imported(("email.parser",), ("email", "tomllib")) == ["email"]
