"""Run a function in a forked child as another user: what the service tests use to attack as `nobody` or to check
what the service user may read."""

from __future__ import annotations

import json
import os
import pwd


def as_user(pw: pwd.struct_passwd | None, fn) -> dict:
    """fn() in a child process as `pw` (its group only; None: as ourselves): its JSON-able answer, or {"error": ...}
    with what the child raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop every privilege, then run fn
        try:
            os.close(r)
            if pw is not None:
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": repr(exc)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text)
