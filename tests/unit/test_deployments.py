"""prefect.yaml: every deployment points at a real flow, and its parameters are ones the flow takes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml


def test_every_deployment_entrypoint_is_a_flow_with_those_parameters():
    from prefect import Flow

    spec = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, attr = dep["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), attr)
        assert isinstance(flow, Flow), dep["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep.get("parameters") or {}) <= accepted, (dep["name"], accepted)
