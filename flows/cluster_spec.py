"""The `--cluster` value: its forms (`threads`, `local[:N]`, `tcp://HOST:PORT`) and whether a named scheduler answers.

Light by design (the standard library only): the CLI refuses a bad value here, in one line, before it imports torch
or Prefect; `flows.engine` opens what it names.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

PROBE_TIMEOUT_S = 5
_ADDRESS = re.compile(r"^(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class ClusterError(ValueError):
    """A --cluster value that names no engine, or a scheduler that cannot be reached; the message says what to do."""


@dataclass(frozen=True)
class ClusterSpec:
    kind: str  # "threads", "local" or "remote"
    n_workers: int | None = None  # local: None = one per GPU, else one per two CPU cores
    address: str | None = None  # remote


def parse_cluster(spec: str) -> ClusterSpec:
    """`threads`, `local`, `local:N` or `tcp://HOST:PORT` (one line naming the forms otherwise)."""
    s = spec.strip()
    if s == "threads":
        return ClusterSpec("threads")
    if s == "local" or s.startswith("local:"):
        n = s.removeprefix("local").removeprefix(":")
        if n and (not n.isdigit() or not 1 <= int(n) <= 256):
            raise ClusterError(f"--cluster {spec}: the worker count must be a whole number from 1 to 256 "
                               "(e.g. local:2)")
        return ClusterSpec("local", int(n) if n else None)
    if _ADDRESS.match(s):
        return ClusterSpec("remote", address=s)
    raise ClusterError(f"--cluster {spec!r} is not an engine; use threads, local, local:N or tcp://HOST:PORT "
                       "(a running Dask scheduler)")


def unreachable(address: str, why: str) -> ClusterError:
    return ClusterError(f"--cluster {address}: no Dask scheduler answers there ({why}); start one (`dask scheduler`, "
                        "or dask-jobqueue on SLURM) or use --cluster local")


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Something listens at a `tcp://HOST:PORT` address (a host that does not resolve, or a port nobody listens on,
    is refused at once, not after the Dask client's retries); a `ClusterError` otherwise."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except socket.gaierror:
        raise unreachable(address, f"the host {host!r} is not known") from None
    except TimeoutError:
        raise unreachable(address, f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise unreachable(address, exc.strerror or type(exc).__name__) from None


def check_form(cluster: str) -> ClusterSpec:
    """A --cluster value as the CLI takes it: its form, and for a scheduler's address, that something listens there."""
    spec = parse_cluster(cluster)
    if spec.address is not None:
        probe(spec.address)
    return spec
