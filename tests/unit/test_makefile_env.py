"""What the Makefile's recipes (`make run`, `make test`, the service) run under."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_recipes_cache_bytecode_even_where_the_environment_turns_it_off(tmp_path):
    """uv installs packages without bytecode; with PYTHONDONTWRITEBYTECODE=1 inherited, every process the Makefile
    starts would compile transformers, prefect, pandas ... from source again (~7 s of CPU each)."""
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {ROOT / 'Makefile'}\nprobe:\n\t@echo \"[$$PYTHONDONTWRITEBYTECODE]\"\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-s", "-f", str(probe), "probe"], cwd=ROOT, capture_output=True, text=True,
                         env=env | {"PYTHONDONTWRITEBYTECODE": "1"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
