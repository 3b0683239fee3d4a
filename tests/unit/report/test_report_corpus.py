"""The report names the text of the core metrics (issue 24 item 4): spec, N tokens, sequences."""

from __future__ import annotations

from report.summary import corpus_line, summary_markdown
from sage_core.prompts.corpus_spec import describe
from tests.unit.report.test_reports import FAILURES, META, _leaderboard

HF = {**describe("hf:NeelNanda/pile-10k:train:text", 1024, 131072, 128), "content": "revision 0123456789ab"}


def test_the_report_names_the_corpus_with_its_tokens_and_sequences():
    md = summary_markdown(_leaderboard(), FAILURES, {**META, "corpus": HF})
    line = next(ln for ln in md.splitlines() if ln.startswith("**Core metrics on:**"))
    assert "hf:NeelNanda/pile-10k:train:text (revision 0123456789ab)" in line
    assert "131072 tokens in 1024 sequences of 128 tokens (BOS first)" in line


def test_the_builtin_corpus_is_named_by_its_sentences_and_a_run_without_one_says_nothing():
    assert corpus_line(describe("builtin", 256, 3012)) == "builtin, 3012 tokens in 256 held-out sentences"
    assert "Core metrics on" not in summary_markdown(_leaderboard(), FAILURES, META)  # runs from before --corpus
