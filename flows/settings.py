"""Prefect settings SAGE runs under."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

from storage.home import SageHome


@contextmanager
def results_in(home: SageHome) -> Iterator[None]:
    """Persist task results (the cache records) under SAGE_HOME: deleting the data also drops its cache."""
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(home.prefect_results()),
                                     PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        yield


@contextmanager
def running_in(home: SageHome, cluster: str = "threads", device: str = "cpu", threads: int = 2) -> Iterator[Any]:
    """Where every command's flows run: Prefect's results under `home`, on the engine `cluster` names
    (`flows.engine.open_engine`), both open for the block."""
    from flows.engine import open_engine

    with results_in(home), open_engine(cluster, device, threads=threads) as eng:
        yield eng
