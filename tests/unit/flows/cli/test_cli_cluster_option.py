"""Issue #27: a bad `--cluster` is refused at once, before torch or Prefect are imported (it was refused only after
the heavy imports, and an unknown scheduler host after a minute of the Dask client's retries), in one `error:` line
printed as written (rich rendered `local:-1:` as an emoji)."""

from __future__ import annotations

import socket

import pytest
import typer
from test_cli_fast_failure import sage  # this folder's runner of the real CLI, which reports its heavy imports

from flows.cli import options
from flows.cluster_spec import ClusterError, check_form, probe


@pytest.mark.parametrize("args, words", [
    (["evaluate", "--tiny", "--cluster", "local:-1"], "error: --cluster local:-1: the worker count must be"),
    (["evaluate", "--cluster", "local:x"], "error: --cluster local:x: the worker count must be"),
    (["evaluate", "--cluster", "tcp://nohost.invalid:1"], "error: --cluster tcp://nohost.invalid:1: no Dask "
                                                          "scheduler answers there (the host 'nohost.invalid'"),
    (["zoo", "build", "--cluster", "thread"], "error: --cluster 'thread' is not an engine"),
    (["capture", "--cluster", "local:0"], "error: --cluster local:0: the worker count"),
])
def test_a_bad_cluster_is_refused_at_once_in_one_literal_line(tmp_path, args, words):
    r, report = sage(args, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(words), r.stdout
    assert report["heavy"] == [], f"imported {report['heavy']} before refusing {args}"


def test_the_error_line_prints_emoji_codes_and_markup_as_written(capsys):
    with pytest.raises(typer.Exit):
        options.fail("--cluster local:-1: bad; :smile: [bold]x[/bold]")
    assert capsys.readouterr().out.strip() == "error: --cluster local:-1: bad; :smile: [bold]x[/bold]"


def test_a_port_nobody_listens_on_is_refused_and_a_listening_one_is_taken():
    with socket.socket() as bound:  # bound, not listening: a connection is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(ClusterError, match="no Dask scheduler answers there") as e:
            probe(f"tcp://127.0.0.1:{port}")
        assert "\n" not in str(e.value)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        assert check_form(address).address == address
    assert check_form("local:2").n_workers == 2  # no address, nothing probed
