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
def write_once(final: Path, meta: dict[str, Any] | None = None, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success write the marker and move it to `final` atomically.

    If `final` already exists and is complete, it is left untouched (the caller should have checked) unless `replace`
    (the caller found it stale): then it is swapped out only once the new one is whole. An incomplete `final` (from an
    older crash) is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*final.parent.glob(f"{final.name}.partial-*"), *final.parent.glob(f"{final.name}.stale-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{final.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"written_at": time.time(), **(meta or {})}, indent=1, default=str))
        old = None
        if final.exists():
            if is_complete(final) and not replace:
                shutil.rmtree(tmp)
                return
            # a crash between the two renames leaves no `final` (rebuilt next time), never a mix of old and new
            old = final.parent / f"{final.name}.stale-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
