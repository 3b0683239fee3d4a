"""Writing parquet tables so that a failing disk is an OSError: polars reports an I/O error inside its writer (a full
disk, a quota) as its own ComputeError ("... underlying IO error: No space left on device (os error 28)"), which the
write-once guard (`storage.atomic.write_once`) would not recognise as a disk fault; it then turns the OSError into one
line saying what to do, and leaves nothing half-written."""

from __future__ import annotations

import errno as _errno
import os
import re
from pathlib import Path

import polars as pl

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError a polars error reports (its "(os error N)"), else None: a polars error that is not about I/O."""
    m = _OS_ERROR.search(str(exc))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code) if code in _errno.errorcode else str(exc))


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """`df.write_parquet(path)`; an I/O error inside polars' writer is raised as the OSError it is."""
    try:
        df.write_parquet(path)
    except pl.exceptions.PolarsError as exc:
        err = os_error_of(exc)
        if err is None:
            raise
        err.filename = str(path)
        raise err from exc
