"""What `flows.prefect_internals` leans on in the installed Prefect and cloudpickle: each test fails, naming the
internal, on a version where it stops working (then fix that module, nothing else)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import cloudpickle

from flows import prefect_internals


def test_flow_and_task_functions_travel_by_reference():
    import flows.evaluate  # noqa: F401  (its flow and tasks are among those renamed)
    from flows.evaluate import evaluate
    from tasks.score import score_sae

    prefect_internals.pickled_by_reference()
    assert evaluate.fn.__qualname__ == "evaluate.fn" and score_sae.fn.__qualname__ == "score_sae.fn"
    assert prefect_internals.pickled_by_reference() == 0  # idempotent
    # by reference: a few hundred bytes naming the module and path, not the function's code and globals
    for fn in (evaluate.fn, score_sae.fn):
        blob = cloudpickle.dumps(fn)
        assert len(blob) < 300, len(blob)
        assert cloudpickle.loads(blob) is fn


def test_prefect_starts_its_temporary_server_as_python_m_uvicorn_through_server_py_subprocess(monkeypatch):
    """`server_dies_with_this_process` swaps server.py's `subprocess` for one call of `_run_uvicorn_command` and
    rewrites a `[python, -m, uvicorn, ...]` command: both must still be how Prefect starts the server."""
    from prefect.server.api import server as srv

    assert hasattr(srv.SubprocessASGIServer, "_run_uvicorn_command"), "Prefect renamed _run_uvicorn_command"
    assert getattr(srv, "subprocess", None) is not None, "prefect.server.api.server no longer imports subprocess"
    seen = []
    monkeypatch.setattr(srv, "subprocess", SimpleNamespace(Popen=lambda args, **kw: seen.append(list(args))))
    instance = srv.SubprocessASGIServer(port=1)  # never started: only its command is built
    instance._run_uvicorn_command()
    assert seen and seen[0][:3] == [sys.executable, "-m", "uvicorn"], seen
    assert "127.0.0.1" in seen[0] and "1" in seen[0]


def test_the_temporary_server_instance_says_whether_it_runs_and_where():
    from prefect.server.api.server import SubprocessASGIServer

    instance = SubprocessASGIServer(port=2)
    assert instance.running is False
    assert instance.api_url.startswith("http://127.0.0.1:2"), instance.api_url


def test_a_named_server_costs_no_import_of_prefects_server():
    """With PREFECT_API_URL set (the service's flow runs, a CLI pointed at `make ui`), nothing starts a temporary
    server, so Prefect's server package (FastAPI, SQLAlchemy: ~5 s of CPU) is never imported."""
    import json
    import os
    import subprocess

    code = ("import json, sys; from flows.prefect_internals import server_dies_with_this_process as s; s(); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('prefect.server'))))")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == []
