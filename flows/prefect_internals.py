"""Every place SAGE leans on a library's internals, here and nowhere else; `tests/unit/flows/test_prefect_internals.py`
checks each one against the installed Prefect and cloudpickle and fails, naming it, on a version where it stops working.

- `pickled_by_reference`: cloudpickle sends SAGE's flow and task functions by reference, not by value (a Dask
  submission otherwise costs ~0.7 s of pickling). No public API names a decorated function's path; renaming its
  `__qualname__` does.
- `server_dies_with_this_process`: the CLI's temporary Prefect server ends when the CLI is killed with SIGKILL. Prefect
  starts it through `SubprocessASGIServer._run_uvicorn_command`; the server's command is wrapped for that one call.
- `temporary_server_url`: the address of the temporary server Prefect runs for this process (a Dask worker is told
  it), from Prefect's one `SubprocessASGIServer` instance.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace


def pickled_by_reference(prefix: tuple[str, ...] = ("flows.", "tasks.")) -> int:
    """Let cloudpickle send SAGE's flow and task functions by reference (module + name), not by value.

    A Dask submission pickles the task and the flow run's context, which holds the flow. cloudpickle sends a function
    by reference only when its module attribute of that name is the function itself; `@flow` and `@task` replace it
    with the Flow or Task object, so every function (and every function it refers to) travelled by value, each costing
    a scan of sys.modules: about 0.7 s per submission in a process that has torch imported. Naming each function by
    the path that finds it (`evaluate.fn`) makes it a reference; Prefect fixed its own keys at decoration time and
    is unaffected. Returns how many functions were renamed."""
    import sys

    from prefect import Flow, Task

    n = 0
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith(prefix) or module is None:
            continue
        for name, obj in list(vars(module).items()):
            fn = getattr(obj, "fn", None)
            if (isinstance(obj, Flow | Task) and getattr(fn, "__module__", None) == module_name
                    and fn.__qualname__ == fn.__name__ == name):
                fn.__qualname__ = f"{name}.fn"
                n += 1
    return n

def temporary_server_url(start: bool) -> str | None:
    """The temporary server Prefect runs for this process (started now if `start`), else None."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # Prefect's one instance for this process
    if not server.running and start:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True):  # starts it, as the first flow run would
            pass
    return server.api_url if server.running else None


# The temporary Prefect server (uvicorn) is a child of this process; started as Prefect starts it, it outlives a
# `kill -9` of the CLI. This launcher asks Linux to SIGTERM it when its parent dies, then runs uvicorn as `-m` would.
_DEATHSIG_LAUNCHER = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)  # the parent died before prctl took effect\n"
    "sys.argv = ['uvicorn', *sys.argv[2:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def server_dies_with_this_process() -> None:
    """Start Prefect's temporary server now, from the main thread (the thread PR_SET_PDEATHSIG watches), through the
    launcher above; Prefect reuses this one instance for the whole run. Nothing to do when PREFECT_API_URL names a
    server, or off Linux (the server then stops only through Prefect's atexit hook)."""
    if not sys.platform.startswith("linux"):
        return
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # before the server's import: ~5 s of CPU for a server this process never starts
        return
    from prefect.server.api import server as srv

    instance = srv.SubprocessASGIServer()
    if instance.running:
        return
    plain = instance._run_uvicorn_command
    real_popen = srv.subprocess.Popen

    def popen(args, **kw):
        if list(args[:3]) == [sys.executable, "-m", "uvicorn"]:
            args = [sys.executable, "-c", _DEATHSIG_LAUNCHER, str(os.getpid()), *args[3:]]
        return real_popen(args, **kw)

    def run_uvicorn():
        saved = srv.subprocess
        srv.subprocess = SimpleNamespace(Popen=popen)  # only server.py's name, only for this call
        try:
            return plain()
        finally:
            srv.subprocess = saved

    instance._run_uvicorn_command = run_uvicorn
    instance.start()
