"""Issue 27 item 10: one unreadable entry of a watched folder never fails the folder. Before, one deeply nested
cfg.json ('[' * 100000, 100 KB) raised a RecursionError out of the listing and none of the good SAEs was found; now
every way an entry can be unreadable (nesting deeper than the parser goes, bytes that are not UTF-8, JSON that is no
object, a file too big, a symlink loop or a broken one, a file or a directory SAGE may not read) is reported in one
line, through one path, and the other entries are listed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sage_core.watch.sources import FolderSource
from storage.home import SageHome
from storage.sae_hub import MAX_CFG_BYTES
from storage.watch_sources import list_source

ROOT = Path(__file__).resolve().parents[3]
CFG = {"architecture": "standard", "d_in": 8, "d_sae": 16, "dtype": "float32", "device": "cpu",
       "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
       "metadata": {"model_name": "sage-test", "hook_name": "blocks.0.hook_resid_post"}}


def _sae(d: Path, seed: int = 0, cfg: bytes | None = None) -> Path:
    d.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({"W_enc": torch.randn(8, 16), "W_dec": torch.randn(16, 8), "b_enc": torch.zeros(16),
               "b_dec": torch.zeros(8)}, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_bytes(json.dumps(CFG).encode() if cfg is None else cfg)
    return d


# what each entry is reported as (a part of its one line)
EXPECTED = {
    "deep": "cfg.json is nested too deeply to be an SAE config",
    "deep-object": "cfg.json is nested too deeply to be an SAE config",
    "not-utf8": "cfg.json is not JSON",
    "a-string": "cfg.json holds a JSON str, not an object",
    "null": "cfg.json holds a JSON NoneType, not an object",
    "huge": f"cfg.json is {MAX_CFG_BYTES + 11} bytes, not an SAE config",
    "loop": "a symlink loop; not followed",
    "cfg-loop": "cfg.json is a symlink loop; not followed",
    "dangling": "a broken symlink (what it names is missing); not followed",
    "weights-dangling": "sae_weights.safetensors is a broken symlink",
    "cfg-unreadable": "permission denied",
    "locked-dir": "permission denied",
}


def _hostile_folder(root: Path) -> Path:
    _sae(root / "good-a", seed=0)
    _sae(root / "good-b", seed=1)
    _sae(root / "deep", cfg=b"[" * 100_000)  # the case: 100 KB, not JSON a parser can follow
    _sae(root / "deep-object", cfg=b'{"a":' * 20_000 + b"1" + b"}" * 20_000)  # valid JSON, as deep
    _sae(root / "not-utf8", cfg=b'{"metadata": {"model_name": "\xff\xfe"}}')
    _sae(root / "a-string", cfg=b'"sage-test"')
    _sae(root / "null", cfg=b"null")
    _sae(root / "huge", cfg=b'{"pad": "' + b"x" * MAX_CFG_BYTES + b'"}')
    (root / "loop").symlink_to(root / "loop")
    _sae(root / "cfg-loop")
    (root / "cfg-loop" / "cfg.json").unlink()
    (root / "cfg-loop" / "cfg.json").symlink_to(root / "cfg-loop" / "cfg.json")
    (root / "dangling").symlink_to(root / "gone-since")
    _sae(root / "weights-dangling")
    (root / "weights-dangling" / "sae_weights.safetensors").unlink()
    (root / "weights-dangling" / "sae_weights.safetensors").symlink_to(root / "weights-dangling" / "old.safetensors")
    _sae(root / "cfg-unreadable", seed=2)
    (root / "cfg-unreadable" / "cfg.json").chmod(0)
    _sae(root / "locked-dir", seed=3)
    (root / "locked-dir").chmod(0)
    return root


_LIST = """
import json, sys
from sage_core.watch.sources import FolderSource
from storage.home import SageHome
from storage.watch_sources import list_source
listing = list_source(FolderSource(url=sys.argv[1]), SageHome(sys.argv[2]))
print(json.dumps({"found": [f.sae_id for f in listing.found], "unreadable": listing.unreadable}))
"""


def _list_as_a_user(root: Path, home: Path) -> dict:
    """The listing, in a process that file permissions apply to: root's file-permission overrides dropped where the
    tests run as root (setpriv; chmod alone denies root nothing), else this process's own user."""
    cmd = [sys.executable, "-c", _LIST, str(root), str(home)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot deny a read")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_unreadable_entry_is_one_line_and_the_good_saes_are_listed(tmp_path):
    root = _hostile_folder(tmp_path / "watched")
    try:
        listing = _list_as_a_user(root, tmp_path / "home")
    finally:
        (root / "locked-dir").chmod(0o755)
    assert sorted(Path(p).name for p in listing["found"]) == ["good-a", "good-b"]
    reasons = {Path(p).name: why for p, why in listing["unreadable"]}
    assert sorted(reasons) == sorted(EXPECTED)
    for name, says in EXPECTED.items():
        assert says in reasons[name], (name, reasons[name])
    assert all("\n" not in why and len(why) <= 300 for why in reasons.values())
    assert not (tmp_path / "home").exists()  # a local folder's listing writes nothing


def test_a_deeply_nested_cfg_does_not_fail_the_folder_in_process(tmp_path):
    """The issue's case alone, in this process (what the watch flow's `list-source` task runs)."""
    root = tmp_path / "watched"
    _sae(root / "good")
    _sae(root / "deep", cfg=b"[" * 100_000)
    listing = list_source(FolderSource(url=str(root)), SageHome(tmp_path / "home"))
    assert [Path(f.sae_id).name for f in listing.found] == ["good"]
    assert listing.unreadable == [(str(root / "deep"), "cfg.json is nested too deeply to be an SAE config (JSON "
                                                      "deeper than the parser goes)")]
    # the folder named is itself such an SAE directory: reported, not raised
    alone = list_source(FolderSource(url=str(root / "deep")), SageHome(tmp_path / "home"))
    assert alone.found == [] and [p for p, _ in alone.unreadable] == [str(root / "deep")]


def test_a_remote_entry_takes_the_same_path(tmp_path):
    """A watched fsspec folder: the deep cfg.json and a backend's own error are one line each, the good SAE copied."""
    import uuid

    import fsspec

    good = _sae(tmp_path / "good")
    base = f"memory://unreadable-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for f in ("cfg.json", "sae_weights.safetensors"):
        fs.pipe_file(f"{base}/good/{f}", (good / f).read_bytes())
        fs.pipe_file(f"{base}/flaky/{f}", (good / f).read_bytes())
    fs.pipe_file(f"{base}/deep/cfg.json", b"[" * 100_000)
    fs.pipe_file(f"{base}/deep/sae_weights.safetensors", b"x")
    cat_file = type(fs).cat_file

    def flaky(self, path, *a, **kw):
        if "/flaky/" in path:
            raise ConnectionResetError(104, "Connection reset by peer")
        return cat_file(self, path, *a, **kw)

    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(type(fs), "cat_file", flaky)
            listing = list_source(FolderSource(url=base), SageHome(tmp_path / "home"))
        assert [f.sae_id.rsplit("/", 1)[-1] for f in listing.found] == ["good"]
        reasons = {p.rsplit("/", 1)[-1]: why for p, why in listing.unreadable}
        assert reasons["deep"].startswith("cfg.json is nested too deeply")
        assert reasons["flaky"] == "could not be read (Connection reset by peer)"
    finally:
        fs.rm(base.removeprefix("memory://"), recursive=True)
