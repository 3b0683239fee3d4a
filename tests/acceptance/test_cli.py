"""The `sage` CLI end to end, as a user runs it."""

from __future__ import annotations

import json

import pytest

from tests.acceptance.cli import one_line_error, run, run_in_process

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`sage zoo build --tiny` from nothing, through the CLI: (its data root, the run)."""
    home = tmp_path_factory.mktemp("cli-home")
    r = run(["zoo", "build", "--tiny"], home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "task performance" in r.stdout and "SAE zoo" in r.stdout and "expl. var" in r.stdout
    return home, r


@pytest.fixture(scope="module")
def tiny_home(built):
    return built[0]


def test_the_zoo_builds_stages_are_one_line_as_they_start_and_end(built):
    """Issue #16 item 5, the zoo's part: through a pipe each stage is one plain line when it starts (with its size)
    and one when it ends (with its duration)."""
    import re

    _, r = built
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[sage ")]
    assert lines and lines[0].split("] ", 1)[1].startswith("start-up: "), r.stderr[:2000]
    for stage in ("start-up", "zoo: model training", "zoo: SAEs trained"):
        starts = [ln for ln in lines if re.fullmatch(rf"\[sage \d\d:\d\d:\d\d\] {stage}: (?!done).+", ln)]
        ends = [ln for ln in lines if re.fullmatch(rf"\[sage \d\d:\d\d:\d\d\] {stage}: done(, .+)? in \d+\.\d s", ln)]
        assert len(starts) == len(ends) == 1, (stage, lines)


def test_zoo_info(tiny_home):
    r = run(["zoo", "info"], tiny_home)
    assert r.returncode == 0 and "sage-test" in r.stdout and "expl. var" in r.stdout


def test_capture_then_info(tiny_home):
    r = run(["capture", "--tiny", "--tasks", "ioi", "--hooks", "blocks.0.hook_resid_post,blocks.0.attn.hook_z",
             "--dtype", "float16", "--positions", "roles"], tiny_home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "activation stores" in r.stdout
    assert "] capture: " in r.stderr and "] capture: done, " in r.stderr, r.stderr[-3000:]  # the stage's plain lines
    path = next((tiny_home / "activations").glob("*/*.zarr"))
    r = run(["capture", "--info", str(path)], tiny_home)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["complete"] and info["dtype"] == "float16" and info["positions"] == "roles"
    assert info["arrays"]["blocks.0.attn.hook_z"]["dims"] == ["prompt", "position", "head", "d_head"]


def test_capture_bad_hook_and_corrupt_store(tiny_home, tmp_path):
    r = run(["capture", "--tiny", "--hooks", "blocks.0.hook_resid_pots"], tiny_home, timeout=120)
    assert r.returncode == 2 and "no hook 'blocks.0.hook_resid_pots'" in r.stdout
    assert "blocks.0.hook_resid_post" in r.stdout
    r = run(["capture", "--tiny", "--device", "cuda:99"], tiny_home, timeout=120)
    assert r.returncode == 2 and one_line_error(r) and "--device cuda:99: torch sees" in r.stdout
    (tmp_path / "junk.zarr").mkdir()
    r = run(["capture", "--info", str(tmp_path / "junk.zarr")], tiny_home, timeout=120)
    assert r.returncode == 2 and r.stdout.startswith("error:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "ioi,nonsense"], "unknown task 'nonsense'"),
        (["--config", "{cfg}"], "exceeds the model's n_ctx=6"),
        (["--config", "{spec}"], "no hook 'blocks.9.hook_resid_post'"),
    ],
)
def test_bad_input_fails_before_training_with_one_line(tmp_path, args, message):
    from sage_core.config import ZooConfig

    tiny = ZooConfig.tiny()
    short = tiny.model_copy(update={"model": tiny.model.model_copy(update={"n_ctx": 6})})
    (tmp_path / "cfg.json").write_text(short.model_dump_json())
    spec = json.loads(tiny.model_dump_json())
    spec["saes"]["extra"] = [{"hook": "blocks.9.hook_resid_post"}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    args = [a.format(cfg=tmp_path / "cfg.json", spec=tmp_path / "spec.json") for a in args]
    r = run_in_process(["zoo", "build", "--tiny", *args], tmp_path / "home")  # refused before any import of work
    assert r.returncode == 2
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert message in r.stdout and lines[-1].startswith("error:"), r.stdout + r.stderr[-2000:]
    assert not (tmp_path / "home" / "zoo").exists(), "nothing may be trained or written for bad input"


def test_locate_prints_top_components(tiny_home):
    r = run(["locate", "--tiny", "--tasks", "ioi", "--attributes", "IO", "--top", "3"], tiny_home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ioi / IO" in r.stdout and "Spearman" in r.stdout and "locations (ranking, validation, heatmaps):" in r.stdout
    assert "] location search: done, 1 attribute in " in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--attributes", "colour"], "no attribute matches ['colour']"),
    (["--kinds", "heads"], "matches nothing"),
])
def test_locate_bad_input(tiny_home, args, message):
    r = run(["locate", "--tiny", "--tasks", "ioi", *args], tiny_home, timeout=120)
    assert r.returncode == 2 and message in r.stdout, r.stdout + r.stderr[-2000:]


def test_fit_prints_quality_table(tiny_home):
    r = run(["fit", "--tiny", "--tasks", "ioi", "--per-group", "1", "--methods", "mse"], tiny_home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ground truth" in r.stdout and "suff." in r.stdout and "ground truth (dictionaries, quality.parquet):" in r.stdout
    assert "] ground truth: done, " in r.stderr, r.stderr[-3000:]
    verdicts = dict(line.strip().split(": ", 1) for line in r.stdout.splitlines() if line.startswith("  ioi "))
    assert sorted(verdicts) == ["ioi IO", "ioi Pos", "ioi S"], r.stdout[-3000:]
    kinds = ("holds", "not read", "edit misses", "below bar", "no figures")
    assert all(v.split(" - ")[0] in kinds for v in verdicts.values()), verdicts


def test_fit_unknown_method(tiny_home):
    r = run_in_process(["fit", "--tiny", "--methods", "median"], tiny_home)
    assert r.returncode == 2 and "unknown dictionary methods ['median']" in r.stdout
