"""`SAGE_HOME` and every path under it (DESIGN.md §4). Nothing else in the project builds a path by hand."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from storage.atomic import StoreError

DEFAULT_HOME = "./sage-data"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# directories that share scores/ and reports/ with the runs (and ground_truth/records): a run may not be one of them
RESERVED_RUN_NAMES = frozenset({"parts", "references", "core", "records"})


def check_run_name(name: str) -> str:
    """`name` if it is a safe run name: a slug that stays one directory under scores/ and reports/, is none of the
    directories stored beside the runs, and is not a write-once temporary; else a one-line ValueError."""
    ok = isinstance(name, str) and RUN_NAME.fullmatch(name) is not None
    if ok and name.lower() in RESERVED_RUN_NAMES:  # lower(): a case-insensitive file system maps Parts to parts
        raise ValueError(f"run name {name!r} is reserved (SAGE stores {', '.join(sorted(RESERVED_RUN_NAMES))} beside "
                         "the runs); pass another --run")
    if not ok or ".partial-" in name or ".stale-" in name:
        raise ValueError(f"invalid run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit (e.g. --run nightly-2024-06-01)")
    return name


class SageHome:
    """The root of everything SAGE writes.

    zoo/<model>/model/{config.json, model.safetensors, tokenizer/}
    zoo/<model>/saes/<sae>/{cfg.json, sae_weights.safetensors}
    datasets/<task>/<hash>/prompts.parquet
    activations/<model-hash>/<dataset-hash>-<request-hash>.zarr
    locations/<hash>/, ground_truth/<hash>/, scores/<run>/, reports/<run>/
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get("SAGE_HOME") or DEFAULT_HOME).resolve()

    def __repr__(self) -> str:
        return f"SageHome({str(self.root)!r})"

    def ensure_writable(self) -> None:
        """Create the root if it is missing and prove it takes a file, so a bad SAGE_HOME fails in one line before
        any compute (not as a traceback after it)."""
        hint = "set SAGE_HOME (or --home) to a writable directory"
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"data root {self.root} is a file, not a directory; {hint}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the data root {self.root} ({e.strerror or e}); {hint}") from e
        try:
            fd, probe = tempfile.mkstemp(prefix=".sage-write-probe-", dir=self.root)
        except OSError as e:
            raise StoreError(f"data root {self.root} is not writable ({e.strerror or e}); {hint}") from e
        os.close(fd)
        os.unlink(probe)

    def relative(self, path: str | Path) -> str:
        """`path` as stored in records: relative to the root, '/'-separated, so a moved or copied root still reads."""
        p = Path(path)
        p = p if p.is_absolute() else p.resolve()
        # lexically first: a directory under the root may be a symlink to another disk, and is still the root's
        if not p.is_relative_to(self.root):
            p = p.resolve()
        if not p.is_relative_to(self.root):
            raise ValueError(f"{p} is not under the data root {self.root}; only paths inside SAGE_HOME are recorded")
        return p.relative_to(self.root).as_posix()

    def at(self, rel: str | Any) -> Path:
        """The path a record's relative path (or a typed reference's `path`, `storage.refs`) names under this root;
        one that would leave the root is refused (a record is data, and data may not point SAGE at other files)."""
        rel = getattr(rel, "path", rel)
        pure = PurePosixPath(str(rel).replace("\\", "/"))
        if not str(rel) or pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"{rel!r} is not a relative path inside the data root {self.root}; the record naming it "
                             "is corrupt: delete it and rerun the stage that wrote it")
        return self.root.joinpath(*pure.parts)

    # zoo
    def zoo_dir(self, model: str) -> Path:
        return self.root / "zoo" / model

    def zoo_models(self) -> list[str]:
        """The models with a zoo directory under this root (built, or being built), by name."""
        return sorted(p.name for p in (self.root / "zoo").glob("*") if p.is_dir())

    def model_dir(self, model: str) -> Path:
        return self.zoo_dir(model) / "model"

    def tokenizer_dir(self, model: str) -> Path:
        return self.model_dir(model) / "tokenizer"

    def sae_dir(self, model: str, sae: str) -> Path:
        return self.zoo_dir(model) / "saes" / sae

    def saes_root(self, model: str) -> Path:
        return self.zoo_dir(model) / "saes"

    def sae_training_acts(self, model: str, key: str) -> Path:
        """Activation cache for SAE training: one safetensors file per hook."""
        return self.zoo_dir(model) / "sae-training-acts" / key

    def zoo_record(self, model: str) -> Path:
        """What the last finished zoo build produced (its manifests), for a fast check that the zoo is whole."""
        return self.zoo_dir(model) / "zoo-record.json"

    def zoo_report(self, model: str) -> Path:
        return self.zoo_dir(model) / "report"

    # datasets
    def dataset_dir(self, task: str, key: str) -> Path:
        return self.root / "datasets" / task / key

    def prompts_path(self, task: str, key: str) -> Path:
        return self.dataset_dir(task, key) / "prompts.parquet"

    def corpus_dir(self, key: str) -> Path:
        return self.root / "datasets" / "corpus" / key

    # activations
    def activations_path(self, model_hash: str, dataset_hash: str, request_hash: str) -> Path:
        return self.root / "activations" / model_hash / f"{dataset_hash}-{request_hash}.zarr"

    # locations
    def locations_dir(self, key: str) -> Path:
        return self.root / "locations" / key

    def location_part(self, key: str) -> Path:
        return self.root / "locations" / "parts" / key

    # ground truth
    def ground_truth_dir(self, key: str) -> Path:
        return self.root / "ground_truth" / key

    def ground_truth_part(self, key: str) -> Path:
        return self.root / "ground_truth" / "parts" / key

    def ground_truth_record(self, key: str) -> Path:
        """What the fit flow produced for one (model, datasets, location and fit settings, code) key."""
        return self.root / "ground_truth" / "records" / f"{key}.json"

    # scores and reports
    def score_parts(self) -> Path:
        return self.root / "scores" / "parts"

    def score_part(self, key: str) -> Path:
        """One scoring unit (an SAE, or a projected pair) on one task."""
        return self.score_parts() / key

    def section_reference(self, key: str) -> Path:
        """What every SAE at one task's cross-sections is judged against (shared by all of them)."""
        return self.root / "scores" / "references" / key

    def core_metrics(self, key: str) -> Path:
        return self.root / "scores" / "core" / key

    def scores_dir(self, run: str) -> Path:
        return self.root / "scores" / check_run_name(run)

    def reports_root(self) -> Path:
        return self.root / "reports"

    def report_dir(self, run: str) -> Path:
        return self.reports_root() / check_run_name(run)

    # prefect
    def prefect_results(self) -> Path:
        return self.root / ".prefect-results"

    # the watch service: its ledger (the one mutable file), remote SAEs copied once, the default watched folder, and
    # what `make serve` runs (PostgreSQL's data, pid files, logs)
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    def watched_root(self) -> Path:
        return self.root / "watched"

    def inbox(self) -> Path:
        return self.root / "inbox"

    def service_dir(self) -> Path:
        return self.root / "service"
