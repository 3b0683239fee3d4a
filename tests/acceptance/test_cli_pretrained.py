"""`sage evaluate --model gpt2` through the real `HookedTransformer.from_pretrained` path, offline: a tiny random-weight
"gpt2" in a local Hugging Face cache, a SAELens-layout SAE directory at one of its hooks, and the core metrics on a
text file (`--corpus text:FILE`: offline, the default hf:NeelNanda/pile-10k cannot be read)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from sage_core.prompts.tasks.vocab import FEMALE_NAMES
from storage.reports import read_failures, read_report
from tests.acceptance.cli import one_line_error, run
from tests.acceptance.hf_cache import write_fake_gpt2

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

HOOKS = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
# the tokenizer lacks every female name (IOI keeps the male ones) and "are" (an answer of SVA, which it cannot pose)
DROPPED = frozenset(FEMALE_NAMES) | {"are"}
CORPUS_TOKENS = 1024  # 16 sequences of 64 tokens: the tiny gpt2's n_ctx is 64
PARAGRAPH = ("In {year}, the old library near the river reopened after a long winter. Mary said that the new reading "
             "room was quiet and bright, and John went to the park because he wanted to read outside. The keys near "
             "the cabinet are on the table, where the volunteers left them after the meeting. Visitors walked to the "
             "store for coffee, then returned to sort the donated books by subject. By the end of the week the "
             "shelves were full again, and the town council thanked everyone who helped.\n\n")


def write_text(path: Path) -> Path:
    """A small English text (about 1,400 words), enough for CORPUS_TOKENS."""
    path.write_text("".join(PARAGRAPH.format(year=1900 + 7 * i) for i in range(18)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    root = tmp_path_factory.mktemp("pretrained")
    env = write_fake_gpt2(root / "hf", tasks=("ioi", "sva"), drop=DROPPED)
    dirs = []
    for hook in HOOKS:  # every residual point: the search keeps a residual cross-section per attribute
        sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=128,
                                            metadata=SAEMetadata(hook_name=hook, model_name="gpt2")))
        dirs.append(root / f"sae-{hook}")
        sae.save_model(dirs[-1])
    home = root / "home"
    text = write_text(root / "library.txt")
    r = run(["evaluate", "--tiny", "--model", "gpt2", "--saes", ",".join(map(str, dirs)), "--tasks", "ioi,sva",
             "--per-group", "1", "--corpus", f"text:{text}", "--corpus-tokens", str(CORPUS_TOKENS)], home, env=env)
    return home, root, env, r


def test_evaluate_a_from_pretrained_model(pretrained_run):
    home, root, _, r = pretrained_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    model_dir = home / "zoo" / "gpt2" / "model"
    meta = json.loads((model_dir / "train_meta.json").read_text())
    assert meta["pretrained"] == "gpt2" and (model_dir / "_MODEL_COMPLETE.json").is_file()
    assert not (home / "zoo" / "sage-test").exists()  # the built-in zoo is neither built nor touched
    report = Path(r.stdout.split("report:")[-1].split()[0])
    board = read_report(report.parent)[1]
    assert set(board["sae"]) >= {"control:oracle", "control:random"}
    assert "gpt2" in (report.parent / "README.md").read_text()
    assert "ioi: ran on gpt2 (accuracy " in r.stdout  # whether the model can do the task at all
    # the prompts were tokenised by the imported model's own tokenizer (pad == BOS there, as in GPT-2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    assert tok.pad_token_id == tok.bos_token_id
    prompts = pl.read_parquet(next((home / "datasets" / "ioi").glob("*/prompts.parquet")))
    first = prompts.row(0, named=True)
    assert tok.decode(first["tokens"][1:]).split()[:2] == first["text"].split()[:2]


def test_saes_at_the_kept_residual_cross_sections_are_scored(pretrained_run):
    home, root, _, r = pretrained_run
    report = Path(r.stdout.split("report:")[-1].split()[0])
    scores = read_report(report.parent)[0]
    failures = read_failures(report.parent)
    assert failures.height == 0, failures
    trained = scores.filter(pl.col("mapping") == "native")
    assert trained.height and set(trained["sae"]) <= {f"sae-{h}" for h in HOOKS}
    assert trained.filter(pl.col("metric") == "summary")["value"].is_not_nan().any()
    for h in HOOKS:  # an SAE the task could not score is named, with the hooks it could have sat at
        if f"sae-{h}" not in set(trained["sae"]):
            assert f"not scored on ioi: sae-{h} (no kept cross-section at {h}" in r.stdout, r.stdout


def test_the_core_metrics_are_computed_on_the_given_text_and_the_report_names_it(pretrained_run):
    home, root, _, r = pretrained_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = root / "library.txt"
    named = f"text:{text} (sha256 "
    shape = f"{CORPUS_TOKENS} tokens in 16 sequences of 64 tokens (BOS first)"
    readme = Path(r.stdout.split("report:")[-1].split()[0]).read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("**Core metrics on:**"))
    assert named in line and shape in line, line
    assert f"core metrics on: {named}" in r.stdout and shape in r.stdout, r.stdout
    # the text, cut by the model's tokenizer, is what the core metrics read: one corpus holds it, BOS first
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(home / "zoo" / "gpt2" / "model" / "tokenizer"))
    tables = [pl.read_parquet(p) for p in (home / "datasets" / "corpus").glob("*/corpus.parquet")]
    real = [t for t in tables if t.height == 16 and {len(x) for x in t["tokens"].to_list()} == {64}]
    assert len(real) == 1, [t.shape for t in tables]
    assert {x[0] for x in real[0]["tokens"].to_list()} == {tok.bos_token_id}
    want = tok(text.read_text(), add_special_tokens=False)["input_ids"][:63]
    assert real[0]["tokens"][0].to_list()[1:] == want
    board = read_report(Path(r.stdout.split("report:")[-1].split()[0]).parent)[1]
    assert board.filter(pl.col("kind") == "trained")["ce_loss_recovered"].is_not_null().any()


def test_pretrained_model_without_saes_or_with_a_typo_fails_in_one_line(pretrained_run, tmp_path):
    _, _, env, _ = pretrained_run
    r = run(["evaluate", "--model", "gpt2"], tmp_path / "h1", timeout=300, env=env)
    assert r.returncode == 2 and one_line_error(r) and "--saes" in r.stdout, r.stdout + r.stderr[-2000:]
    r = run(["evaluate", "--model", "gtp2", "--saes", "x/y"], tmp_path / "h2", timeout=300, env=env)
    assert r.returncode == 2 and one_line_error(r) and "gpt2" in r.stdout, r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "h1" / "zoo").exists() and not (tmp_path / "h2" / "zoo").exists()


def test_offline_without_a_corpus_the_default_dataset_fails_in_one_line_naming_a_text_file(pretrained_run, tmp_path):
    _, root, env, _ = pretrained_run
    sae = root / f"sae-{HOOKS[0]}"
    r = run(["evaluate", "--model", "gpt2", "--saes", str(sae)], tmp_path / "h", timeout=300, env=env)
    assert r.returncode == 2 and one_line_error(r), r.stdout + r.stderr[-2000:]
    assert "NeelNanda/pile-10k" in r.stdout and "--corpus text:" in r.stdout, r.stdout
    assert not (tmp_path / "h" / "zoo").exists()  # refused before the model is imported


def test_a_task_the_tokenizer_cannot_pose_is_skipped_and_the_others_run(pretrained_run):
    home, _, _, r = pretrained_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    assert "sva: not posed on gpt2 (its answer word(s) ['are'] are not one token for this tokenizer)" in out, out
    assert "ioi: ran on gpt2 (accuracy" in out and "dropped 16 of 32 names (Alice, Anna, Emma" in out, out
    report = Path(r.stdout.split("report:")[-1].split()[0])
    text = " ".join(report.read_text().split())
    assert "**Tasks on this model:**" in text and "sva: not posed on gpt2" in text
    scores = read_report(report.parent)[0]
    assert set(scores["task"]) == {"ioi"}  # no ground truth, no scores for the task that was not posed
    prompts = pl.read_parquet(next((home / "datasets" / "ioi").glob("*/prompts.parquet")))
    assert not set(prompts["attr_IO"]) & set(FEMALE_NAMES)
