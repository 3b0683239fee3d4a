"""The CLI runs of the acceptance tests share the session's Prefect test server (see cli.API_URL)."""

from __future__ import annotations

import pytest

from tests.acceptance import cli


@pytest.fixture(scope="session", autouse=True)
def shared_prefect_server(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    cli.API_URL = PREFECT_API_URL.value()
    yield
    cli.API_URL = None
