"""`tasks.watch.scored_saes`: what an evaluation's leaderboard says became of each SAE it resolved."""

from __future__ import annotations

import polars as pl

from storage.refs import SAERef
from tasks.watch import scored_saes


def ref(name: str, h: str) -> SAERef:
    return SAERef(spec=f"/inbox/{name}", name=name, hook="blocks.0.hook_resid_post", hash=h, arch="topk", d_sae=64,
                  d_in=32, source="dir")


BOARD = pl.DataFrame({
    "sae": ["good", "good", "half", "half", "bad", "pair", "oracle"],
    "task": ["ioi", "sva", "ioi", "sva", "ioi", "ioi", "ioi"],
    "kind": ["trained", "trained", "trained", "trained", "trained", "trained", "oracle"],
    "mapping": ["native", "native", "native", "native", "native", "projection", "control"],
    "status": ["ok", "ok", "failed: nan in W_dec", "ok", "failed: d_in 16 != 32", "ok", "ok"],
})


def test_ok_anywhere_is_evaluated_all_failed_is_failed_unreached_is_absent():
    rows = scored_saes(BOARD, [ref("good", "h1"), ref("half", "h2"), ref("bad", "h3"), ref("unreached", "h4")])
    assert [(r["sae"], r["status"], r["reason"], r["content_hash"]) for r in rows] == [
        ("good", "evaluated", "", "h1"), ("half", "evaluated", "", "h2"), ("bad", "failed", "d_in 16 != 32", "h3")]
    assert rows[0]["spec"] == "/inbox/good"


def test_projected_pairs_and_controls_are_not_an_sae_of_their_own():
    assert scored_saes(BOARD, [ref("pair", "h5"), ref("oracle", "h6")]) == []
