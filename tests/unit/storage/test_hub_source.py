"""The `hub:` source against a stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1 (a port the OS picks, one
server per test): the real `huggingface_hub` client lists repos, their trees and cfg.json files from it, and
`SAE.from_pretrained` loads what was listed. Any connection to another address fails the test."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch
from huggingface_hub import constants
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sage_core.watch.plan import SeenRow, decide
from sage_core.watch.sources import HubSource, parse_source
from storage.home import SageHome
from storage.sae_hub import sae_files_hash
from storage.sae_sources import load_sae_spec
from storage.watch_sources import SourceError, list_source

FILES = ("cfg.json", "sae_weights.safetensors")
NOW = "2026-11-30T03:00:00.000000+00:00"


def sae_files(tmp_path, seed=0, hook="blocks.0.hook_resid_post", model="sage-test") -> dict[str, bytes]:
    """An SAE's two files in SAELens' layout, as `save_model` writes them."""
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name=hook, model_name=model)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    d = tmp_path / f"sae-{seed}-{hook}-{model}"
    sae.save_model(d)
    return {f: (d / f).read_bytes() for f in FILES}


def _sha(name: str, data: bytes) -> str:
    if name == "cfg.json":
        data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def by_hand(files: dict[str, bytes]) -> str:
    """The content hash by hand: sha256 over each file's name and its own truncated sha256 (cfg.json's of its JSON
    with sorted keys, no whitespace: the content, not the order it was written in)."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update(_sha(name, files[name]).encode())
    return h.hexdigest()[:16]


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """The Hub's routes that huggingface_hub calls: `HEAD /` (the reachability probe), `GET /api/models` (author=,
    filter=), `GET /api/models/<repo>/tree/<revision>` (recursive), `HEAD|GET /<repo>/resolve/<revision>/<file>`.
    Each repo's commit sha is a hash of its files, so changing a file moves `main`."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []
        self.refuse_listing = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, repo_id: str, files: dict[str, bytes], tags=("saelens",), lfs=True, forbidden=False):
        self.repos[repo_id] = {"files": dict(files), "tags": list(tags), "lfs": lfs, "forbidden": forbidden}

    def sha(self, repo_id: str) -> str:
        files = self.repos[repo_id]["files"]
        return hashlib.sha1(json.dumps({p: _git_oid(b) for p, b in sorted(files.items())}).encode()).hexdigest()

    def _send(self, h, status: int, data: bytes, body: bool, headers: dict | None = None):
        h.send_response(status)
        for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _json(self, h, obj, body: bool, status: int = 200, headers: dict | None = None):
        self._send(h, status, json.dumps(obj).encode(), body, {"Content-Type": "application/json", **(headers or {})})

    def _error(self, h, status: int, code: str, body: bool, sha: str | None = None):
        self._json(h, {"error": code}, body, status, {"X-Error-Code": code, **({"X-Repo-Commit": sha} if sha else {})})

    def answer(self, h, body: bool):
        url = urlsplit(h.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.requests.append(f"{h.command} {path}")
        if path == "/":
            return self._send(h, 200, b"a stand-in hub", body)
        if path == "/api/models":
            if self.refuse_listing:
                return self._error(h, 400, "BadRequest", body)
            author, tags = query.get("author", [None])[0], query.get("filter", [])
            return self._json(h, [{"_id": rid, "id": rid, "sha": self.sha(rid)} for rid, r in self.repos.items()
                                  if (author is None or rid.split("/")[0] == author)
                                  and all(t in r["tags"] for t in tags)], body)
        if path.startswith("/api/models/"):
            parts = path.removeprefix("/api/models/").split("/")
            repo_id, rev = "/".join(parts[:2]), parts[3] if len(parts) > 3 and parts[2] == "tree" else None
            return self._tree(h, repo_id, rev, body)
        parts = path.lstrip("/").split("/")
        if len(parts) > 4 and parts[2] == "resolve":
            return self._file(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        return self._error(h, 404, "NotFound", body)

    def _resolve(self, h, repo_id: str, rev: str | None, body: bool) -> dict | None:
        r = self.repos.get(repo_id)
        if r is None:
            self._error(h, 404, "RepoNotFound", body)
            return None
        if r["forbidden"]:
            self._error(h, 403, "GatedRepo", body)
            return None
        if rev not in ("main", self.sha(repo_id)):
            self._error(h, 404, "RevisionNotFound", body)
            return None
        return r

    def _tree(self, h, repo_id: str, rev: str | None, body: bool):
        r = self._resolve(h, repo_id, rev, body)
        if r is None:
            return None
        entries, dirs = [], set()
        for p, data in sorted(r["files"].items()):
            parts = p.split("/")
            dirs |= {"/".join(parts[:i]) for i in range(1, len(parts))}
            e = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": p}
            if r["lfs"] and p.endswith(".safetensors"):
                e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(e)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        return self._json(h, entries, body)

    def _file(self, h, repo_id: str, rev: str, filename: str, body: bool):
        r = self._resolve(h, repo_id, rev, body)
        if r is None:
            return None
        sha = self.sha(repo_id)
        if filename not in r["files"]:
            return self._error(h, 404, "EntryNotFound", body, sha)
        data = r["files"][filename]
        etag = hashlib.sha256(data).hexdigest() if r["lfs"] and filename.endswith(".safetensors") else _git_oid(data)
        return self._send(h, 200, data, body, {"X-Repo-Commit": sha, "ETag": f'"{etag}"'})


def in_folder(folder: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{folder}/{name}": data for name, data in files.items()}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The stand-in hub, running; HF_ENDPOINT names it; online whatever HF_HUB_OFFLINE the environment set (read by
    huggingface_hub at import, so its constant too); an empty cache; connections only to 127.0.0.1."""
    real_connect = socket.socket.connect

    def local_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            raise AssertionError(f"the test connected to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    hub = FakeHub()
    hub.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # what sae_lens' downloads read (no endpoint argument): huggingface_hub's import-time copies of HF_ENDPOINT
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf" / "agents.json"), raising=False)
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()


@pytest.fixture
def home(tmp_path):
    return SageHome(tmp_path / "home")


def test_a_hub_source_lists_the_sae_folders_of_its_repos(tmp_path, fake_hub, home):
    l0, l1 = sae_files(tmp_path, 0), sae_files(tmp_path, 1, hook="blocks.0.attn.hook_z")
    l3 = sae_files(tmp_path, 3, model="gpt2-small")
    fake_hub.add("lab-a/saes", {**in_folder("res/l0", l0), **in_folder("res/deep/l1", l1),
                                "README.md": b"# SAEs", "tokenizer/config.json": b"{}"})  # not an SAE folder
    fake_hub.add("lab-a/more", {**in_folder("layer_3", l3), "broken/cfg.json": b"{not json",
                                "broken/sae_weights.safetensors": l0["sae_weights.safetensors"]})
    fake_hub.add("lab-a/a-model", {"config.json": b"{}", "model.safetensors": b"x"}, tags=("transformers",))
    fake_hub.add("lab-b/saes", in_folder("l0", l0))

    listing = list_source(parse_source("hub:author=lab-a"), home)
    assert [(f.release, f.sae_id, f.spec, f.model, f.hook, f.source) for f in listing.found] == [
        ("lab-a/more", "layer_3", "hf:lab-a/more:layer_3", "gpt2-small", "blocks.0.hook_resid_post",
         "hub:author=lab-a"),
        ("lab-a/saes", "res/deep/l1", "hf:lab-a/saes:res/deep/l1", "sage-test", "blocks.0.attn.hook_z",
         "hub:author=lab-a"),
        ("lab-a/saes", "res/l0", "hf:lab-a/saes:res/l0", "sage-test", "blocks.0.hook_resid_post", "hub:author=lab-a")]
    # the hash a folder, the zoo or the cache gives the same files, from cfg.json and the LFS sha256 alone
    assert [f.content_hash for f in listing.found] == [by_hand(l3), by_hand(l1), by_hand(l0)]
    (tmp_path / "copy").mkdir()
    for name, data in l0.items():
        (tmp_path / "copy" / name).write_bytes(data)
    assert sae_files_hash(tmp_path / "copy") == by_hand(l0)
    [(path, why)] = listing.unreadable
    assert path == "lab-a/more/broken" and why.startswith("cfg.json is not JSON") and "\n" not in why
    # only cfg.json files were fetched, each at the commit the tree was listed at; never a weights file
    fetched = [r for r in fake_hub.requests if "/resolve/" in r]
    assert fetched and all(r.endswith("/cfg.json") for r in fetched)
    assert all(fake_hub.sha(r.split("/")[1] + "/" + r.split("/")[2]) in r for r in fetched)

    # by library tag (library_name: saelens), then narrowed by repo and model patterns
    assert {f.release for f in list_source(parse_source("hub:library=saelens"), home).found} == {
        "lab-a/more", "lab-a/saes", "lab-b/saes"}
    assert {f.release for f in list_source(parse_source("hub:author=lab-a,repo=sa*"), home).found} == {"lab-a/saes"}
    assert {f.release for f in list_source(parse_source("hub:library=saelens,repo=lab-b/*"), home).found} == {
        "lab-b/saes"}
    assert [f.spec for f in list_source(parse_source("hub:author=lab-a,model=gpt2*"), home).found] == [
        "hf:lab-a/more:layer_3"]
    # the listing is served by the hub each time: a second one reads cfg.json from the cache at the same commit
    before = len([r for r in fake_hub.requests if "/resolve/" in r])
    assert list_source(parse_source("hub:author=lab-a"), home) == listing
    assert len([r for r in fake_hub.requests if "/resolve/" in r]) == before


def test_the_listed_spec_loads_through_sae_lens_with_the_listed_hash(tmp_path, fake_hub, home):
    files = sae_files(tmp_path, 5)
    fake_hub.add("lab-a/saes", in_folder("res/l0", files))
    (found,) = list_source(HubSource(author="lab-a"), home).found
    loaded = load_sae_spec(found.spec)  # SAE.from_pretrained("lab-a/saes", "res/l0") from the stand-in
    assert loaded.content_hash == found.content_hash == by_hand(files)
    assert loaded.hook == found.hook


def test_a_new_repo_and_new_weights_are_new_on_the_next_listing(tmp_path, fake_hub, home):
    a, b = sae_files(tmp_path, 0), sae_files(tmp_path, 1)
    fake_hub.add("lab-a/first", in_folder("l0", a))
    src = parse_source("hub:library=saelens")
    first = list_source(src, home).found
    seen = {f.key: SeenRow(status="evaluated", content_hash=f.content_hash, run="night-1", sae=f.sae_id)
            for f in first}
    assert [d.action for d in decide(first, seen, {}, "me", NOW)] == ["unchanged"]

    fake_hub.add("lab-c/released-today", in_folder("blocks.0", b))  # published after the last run
    changed = sae_files(tmp_path, 2)
    fake_hub.repos["lab-a/first"]["files"].update(in_folder("l0", changed))  # new weights pushed to main
    second = list_source(src, home).found
    decisions = {d.found.release: d for d in decide(second, seen, {}, "me", NOW)}
    assert set(decisions) == {"lab-a/first", "lab-c/released-today"}
    assert (decisions["lab-c/released-today"].action, decisions["lab-c/released-today"].reason) == (
        "evaluate", "never seen")
    assert decisions["lab-a/first"].action == "evaluate" and "weights changed" in decisions["lab-a/first"].reason
    assert decisions["lab-a/first"].found.content_hash == by_hand(changed)


def test_what_cannot_be_read_is_reported_and_the_rest_listed(tmp_path, fake_hub, home):
    good = sae_files(tmp_path, 0)
    fake_hub.add("lab-a/gated", in_folder("l0", good), forbidden=True)
    fake_hub.add("lab-a/odd", {**good, **in_folder("l0", good), "weights-only/sae_weights.safetensors": b"x",
                               "no-model/cfg.json": b'{"d_in": 8}', "no-model/sae_weights.safetensors": b"x",
                               "huge/cfg.json": b" " * (2 << 20), "huge/sae_weights.safetensors": b"x"})
    fake_hub.add("lab-a/plain", in_folder("l0", good), lfs=False)  # weights outside LFS: downloaded to be hashed
    listing = list_source(HubSource(author="lab-a"), home)
    assert [(f.release, f.sae_id, f.content_hash) for f in listing.found] == [
        ("lab-a/odd", "l0", by_hand(good)), ("lab-a/plain", "l0", by_hand(good))]
    reasons = dict(listing.unreadable)
    assert sorted(reasons) == ["lab-a/gated", "lab-a/odd", "lab-a/odd/huge", "lab-a/odd/no-model",
                               "lab-a/odd/weights-only"]
    assert reasons["lab-a/gated"].startswith("its files could not be listed (")
    assert reasons["lab-a/odd"].startswith("an SAE at the repo's root")
    assert reasons["lab-a/odd/huge"] == f"cfg.json is {2 << 20} bytes, not an SAE config (a few KB)"
    assert reasons["lab-a/odd/no-model"] == "cfg.json names no model (metadata.model_name); add it"
    assert reasons["lab-a/odd/weights-only"].startswith("missing cfg.json")
    assert all("\n" not in why for why in reasons.values())
    assert not any("/huge/" in r for r in fake_hub.requests if "/resolve/" in r)  # refused by its listed size

    fake_hub.refuse_listing = True
    with pytest.raises(SourceError, match=r"did not list its repos \(.*\); check the author and library") as e:
        list_source(HubSource(author="lab-a"), home)
    assert "\n" not in str(e.value)


def test_an_unreachable_or_offline_hub_is_one_line_that_says_what_to_do(fake_hub, home, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    with pytest.raises(SourceError, match=rf"hub:author=lab-a: the Hugging Face hub at {dead} cannot be reached "
                                          r"\(.*\); .*set HF_ENDPOINT to a reachable mirror") as e:
        list_source(parse_source("hub:author=lab-a"), home)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match=r"HF_HUB_OFFLINE is set, so the Hugging Face hub was not asked; .*unset "
                                          "HF_HUB_OFFLINE where the hub") as e:
        list_source(parse_source("hub:author=lab-a"), home)
    assert "\n" not in str(e.value)
    assert not any(r.startswith("GET /api/") for r in fake_hub.requests)
