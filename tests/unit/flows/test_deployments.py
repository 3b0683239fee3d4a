"""prefect.yaml: every deployment points at a real flow, and its parameters are ones the flow takes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml


def test_every_deployment_entrypoint_is_a_flow_with_those_parameters():
    from prefect import Flow

    spec = yaml.safe_load((Path(__file__).parents[3] / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, attr = dep["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), attr)
        assert isinstance(flow, Flow), dep["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep.get("parameters") or {}) <= accepted, (dep["name"], accepted)


def test_no_deployment_lets_its_parameters_run_code():
    """`py:` SAE specs import and run code; a deployment's parameters are data, so no deployment turns them on
    (storage.sae_sources refuses them unless SAGE_ALLOW_PY_SPECS=1 where the flow runs)."""
    from storage.py_specs import PY_SPECS_ENV

    spec = yaml.safe_load((Path(__file__).parents[3] / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        env = (((dep.get("work_pool") or {}).get("job_variables") or {}).get("env") or {})
        assert PY_SPECS_ENV not in env, dep["name"]


def test_run_names_in_deployment_parameters_are_valid():
    from storage.home import check_run_name

    spec = yaml.safe_load((Path(__file__).parents[3] / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        run = (dep.get("parameters") or {}).get("run")
        if run is not None:
            assert check_run_name(run) == run, dep["name"]


def test_torch_lower_bound_makes_torch_load_safe():
    """SAELens loads some registry SAEs with torch.load, which defaults to weights_only (no pickled code) from 2.6."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert not torch.specifier.contains("2.5.1") and torch.specifier.contains("2.6.0"), str(torch.specifier)


def _deployment(name: str) -> dict:
    spec = yaml.safe_load((Path(__file__).parents[3] / "prefect.yaml").read_text())
    return next(d for d in spec["deployments"] if d["name"] == name)


def test_watch_nightly_runs_the_watch_flow_every_night_at_three_utc():
    """Active, and Prefect's own scheduler code reads the cron as 03:00 UTC each day (hand-computed dates)."""
    import asyncio
    from datetime import UTC, datetime

    from prefect.server.schemas.schedules import CronSchedule

    dep = _deployment("watch-nightly")
    assert dep["entrypoint"] == "flows/watch.py:watch"
    assert dep["work_pool"]["name"] == "sage-process"
    assert dep["work_pool"]["job_variables"]["env"]["SAGE_HOME"] == "{{ $SAGE_HOME }}"
    [sched] = dep["schedules"]
    assert sched["active"] is True
    dates = asyncio.run(CronSchedule(cron=sched["cron"], timezone=sched["timezone"])
                        .get_dates(n=2, start=datetime(2024, 6, 1, 12, 0, tzinfo=UTC)))
    assert [d.isoformat() for d in dates] == ["2024-06-02T03:00:00+00:00", "2024-06-03T03:00:00+00:00"]


def test_watch_nightly_sources_are_valid_once_deployed(monkeypatch):
    """`prefect deploy` fills {{ $SAGE_HOME }} from the environment (as `make serve` sets it), with the function it
    uses; every source then parses, and the inbox is the one under that SAGE_HOME."""
    from prefect.utilities.templating import apply_values

    from sage_core.watch.sources import FolderSource, RegistrySource, parse_source

    monkeypatch.setenv("SAGE_HOME", "/srv/sage")
    dep = apply_values(_deployment("watch-nightly"), {}, remove_notset=False)
    sources = [parse_source(s) for s in dep["parameters"]["sources"]]
    assert sources == [FolderSource(url="/srv/sage/inbox"), RegistrySource(models=("gpt2-small",))]
    assert dep["work_pool"]["job_variables"]["env"]["SAGE_HOME"] == "/srv/sage"


def test_no_deployment_is_left_without_a_schedule_by_mistake():
    """Only the watch is scheduled; the other deployments run when started (UI, CLI), and none has an inactive
    schedule left over."""
    spec = yaml.safe_load((Path(__file__).parents[3] / "prefect.yaml").read_text())
    scheduled = {d["name"]: [s.get("active", True) for s in d.get("schedules") or []] for d in spec["deployments"]}
    assert {n: a for n, a in scheduled.items() if a} == {"watch-nightly": [True]}
