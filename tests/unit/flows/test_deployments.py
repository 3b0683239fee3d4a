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
    from storage.sae_sources import PY_SPECS_ENV

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
