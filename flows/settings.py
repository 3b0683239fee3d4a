"""Prefect settings SAGE runs under."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

from storage.home import SageHome


@contextmanager
def results_in(home: SageHome) -> Iterator[None]:
    """Persist task results (the cache records) under SAGE_HOME: deleting the data also drops its cache."""
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(home.prefect_results()),
                                     PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        yield
