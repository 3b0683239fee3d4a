"""Every benchmark's printed figures, kept in results/<name>.md with the commit and date they came from.

The README quotes build-dependent figures only from these files, so a figure always names the run that wrote it.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


@contextmanager
def recording(name: str) -> Iterator[None]:
    """Print as usual; on success also write what was printed to results/<name>.md (a failed run writes nothing)."""
    from benchmarks.figures import commit

    buf = io.StringIO()
    real = sys.stdout
    sys.stdout = _Tee(real, buf)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        sys.stdout = real
    args = " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join([
        f"# benchmarks/{name}",
        "",
        f"Written by `python -m benchmarks.{name}{(' ' + args) if args else ''}` at commit {commit()} on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPU cores, {time.perf_counter() - t0:.0f} s.",
        "",
        "```",
        buf.getvalue().rstrip(),
        "```",
        "",
    ]))
