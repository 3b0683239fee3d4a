"""Watch source kinds are registries: each kind registers how it is parsed (sage_core.watch.sources.source_kind) and
how it is listed (storage.watch_sources.lists); parse_source and list_source only look them up."""

from __future__ import annotations

import pytest

from sage_core.watch import sources as ws
from sage_core.watch.sources import FolderSource, Listing, parse_source
from storage import watch_sources as st
from storage.home import SageHome


def test_every_parsed_kind_has_a_lister():
    assert set(ws.PARSERS) == {"registry", "dir", "yaml", "hub"}
    kinds = {type(parse_source(t)) for t in ("registry:gpt2-small", "dir:/x", "yaml:/y.yaml", "hub:author=a")}
    assert kinds == set(st.LISTERS)


def test_a_new_kind_is_one_parser_and_one_lister(monkeypatch, tmp_path):
    monkeypatch.setattr(ws, "PARSERS", dict(ws.PARSERS))
    monkeypatch.setattr(st, "LISTERS", dict(st.LISTERS))

    class Inbox(FolderSource):  # a stand-in kind: a folder under another name
        pass

    ws.source_kind("inbox")(lambda rest: Inbox(url=rest))
    seen = []
    st.lists(Inbox)(lambda src, home, write: seen.append((src.url, write)) or Listing())
    src = parse_source("inbox:/data/new")
    assert isinstance(src, Inbox) and st.list_source(src, SageHome(tmp_path), write=False) == Listing()
    assert seen == [("/data/new", False)]
    with pytest.raises(ValueError, match="registered twice"):
        ws.source_kind("inbox")(lambda rest: Inbox(url=rest))
    with pytest.raises(ValueError, match="unknown source kind 'nope'"):
        parse_source("nope:x")
