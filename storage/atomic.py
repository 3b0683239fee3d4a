"""Write-once directories: built in a temporary sibling, marked complete last, then renamed into place.

A reader only ever sees a directory that is absent or whole: a crash leaves at most a `*.partial-*` sibling, which
the next writer removes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = "_COMPLETE.json"


class StoreError(RuntimeError):
    """A store is missing, incomplete or not what was asked for; the message says what to do."""


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_marker(path: Path) -> dict[str, Any]:
    p = Path(path) / MARKER
    if not p.is_file():
        raise StoreError(f"{path} is incomplete or missing (no {MARKER}); rebuild it (e.g. rerun `sage zoo build`)")
    return json.loads(p.read_text())


@contextmanager
def write_once(final: Path, meta: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success write the marker and move it to `final` atomically.

    If `final` already exists and is complete, it is left untouched (the caller should have checked); an incomplete
    `final` (from an older crash) is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{final.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"written_at": time.time(), **(meta or {})}, indent=1, default=str))
        if final.exists():
            if is_complete(final):
                shutil.rmtree(tmp)
                return
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
