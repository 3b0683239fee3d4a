"""Issue 27 item 1: started by root, the service's worker runs as an unprivileged service user. What that user is
given (the data root, its own HOME) and what it is not (the secrets, anything a planted symlink or hard link points
at), and the one line when it cannot run this environment's Python. Root only: not root, the worker runs as us."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from flows import service
from flows.service.files import write_private
from storage.home import SageHome
from tests.as_user import as_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the service user is root's: not root, the worker is us")


@pytest.fixture
def home():
    """A SAGE_HOME other users may enter (pytest's tmp_path sits in a directory closed to them)."""
    d = Path(tempfile.mkdtemp(prefix="sage-user-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _svc(home: Path, user: str = service.SERVICE_USER) -> service.Service:
    return service.Service(home=SageHome(home), service_user=user, say=lambda s: None)


def _as(pw: pwd.struct_passwd, fn) -> dict:
    """fn() in a child process as `pw` (its group only): its JSON-able answer."""
    return as_user(pw, fn)


def test_the_service_user_is_made_once_and_is_never_root(home, monkeypatch):
    pw = service.service_account(_svc(home))
    assert (pw.pw_name, pw.pw_shell) == (service.SERVICE_USER, "/usr/sbin/nologin") and pw.pw_uid != 0
    assert service.service_account(_svc(home)) == pw  # found, not made again
    monkeypatch.setenv(service.SERVICE_USER_ENV, "nobody")
    assert service.Service(home=SageHome(home)).service_user == "nobody"
    for user, why in (("root", "is root or in root's group"), ("not a name!", "is not a user name")):
        with pytest.raises(service.ServiceError, match=why) as err:
            service.service_account(_svc(home, user))
        assert "\n" not in str(err.value) and service.SERVICE_USER_ENV in str(err.value)


def test_the_data_root_is_handed_to_the_service_user_and_the_secrets_stay_roots(home, tmp_path):
    svc = _svc(home)
    pw = service.service_account(svc)
    root = SageHome(home)
    (root.root / "zoo" / "m").mkdir(parents=True)
    (root.root / "zoo" / "m" / "weights.bin").write_bytes(b"w")
    root.ledger_path().write_bytes(b"ledger")
    svc.dir.mkdir(mode=0o711)
    write_private(svc.secret_path, "sage:password\n")
    write_private(svc.dir / "postgres.secret", "db-password\n")
    outside = tmp_path / "outside"  # root's, reached from the data root only through links
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_text("root's")
    (outside / "dir" / "inner").write_text("root's")
    (root.root / "zoo" / "file-link").symlink_to(outside / "file")
    (root.root / "zoo" / "dir-link").symlink_to(outside / "dir")
    os.link(outside / "file", root.root / "zoo" / "hard-link")

    assert service.hand_over(svc, pw) >= 5
    owner = {p: p.lstat().st_uid for p in (root.root, root.root / "zoo", root.root / "zoo" / "m",
                                           root.root / "zoo" / "m" / "weights.bin", root.ledger_path(),
                                           svc.worker_home)}
    assert set(owner.values()) == {pw.pw_uid}, owner
    assert stat.S_IMODE(svc.worker_home.stat().st_mode) == 0o700
    for p in (svc.dir, svc.secret_path, svc.dir / "postgres.secret", outside / "file", outside / "dir",
              outside / "dir" / "inner"):
        assert p.stat().st_uid == 0, p
    assert stat.S_IMODE(svc.secret_path.stat().st_mode) == 0o600
    assert service.hand_over(svc, pw) == 0  # already its: nothing changes

    def as_service_user() -> dict:
        (root.root / "zoo" / "m" / "new.bin").write_bytes(b"n")  # the flow runs write the data root
        (root.root / "scores").mkdir()
        readable = []
        for p in (svc.secret_path, svc.dir / "postgres.secret"):
            try:
                p.read_bytes()
                readable.append(p.name)
            except PermissionError:
                pass
        try:
            (root.root / "zoo" / "hard-link").write_text("changed")  # the same file as root's outside
            wrote_outside = True
        except PermissionError:
            wrote_outside = False
        return {"readable": readable, "wrote outside": wrote_outside}

    assert _as(pw, as_service_user) == {"readable": [], "wrote outside": False}


def test_a_python_the_service_user_cannot_run_is_one_line_naming_the_closed_directory(home):
    svc = _svc(home)
    pw = service.service_account(svc)
    closed = Path(tempfile.mkdtemp(prefix="sage-closed-venv-"))  # 0700, as root's home often is
    try:
        (closed / "python").symlink_to(sys.executable)
        with pytest.raises(service.ServiceError) as err:
            service.check_runnable(svc, pw, python=str(closed / "python"))
        msg = str(err.value)
        assert "\n" not in msg and f"{closed} is closed to other users; open it (chmod o+x {closed})" in msg, msg
        assert msg.startswith(f"the service user {pw.pw_name} cannot run {closed / 'python'}")
    finally:
        shutil.rmtree(closed)


def test_a_worker_an_older_make_serve_started_as_root_is_stopped_to_run_as_the_service_user(home):
    """Upgrading: `make serve` finds the worker running as root; it stops it (start then runs it as the service user)
    and leaves one that already runs as that user alone."""
    svc = _svc(home)
    pw = service.service_account(svc)
    svc.dir.mkdir(mode=0o711)
    as_root = service._spawn(svc, "worker", ["sleep", "300"])
    assert service.stop_a_worker_of_another_user(svc, pw) is True
    assert service.recorded(svc, "worker") is None and service._start_time(as_root) is None
    as_user = service._spawn(svc, "worker", ["sleep", "300"], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    try:
        assert service.stop_a_worker_of_another_user(svc, pw) is False
        assert service.recorded(svc, "worker") == as_user
    finally:
        service.stop(svc)
