"""`SAGE_HOME` and every path under it (DESIGN.md §4). Nothing else in the project builds a path by hand."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "./sage-data"


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

    # zoo
    def zoo_dir(self, model: str) -> Path:
        return self.root / "zoo" / model

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
    def score_part(self, key: str) -> Path:
        """One scoring unit (an SAE, or a projected pair) on one task."""
        return self.root / "scores" / "parts" / key

    def section_reference(self, key: str) -> Path:
        """What every SAE at one task's cross-sections is judged against (shared by all of them)."""
        return self.root / "scores" / "references" / key

    def core_metrics(self, key: str) -> Path:
        return self.root / "scores" / "core" / key

    def scores_dir(self, run: str) -> Path:
        return self.root / "scores" / run

    def reports_root(self) -> Path:
        return self.root / "reports"

    def report_dir(self, run: str) -> Path:
        return self.reports_root() / run

    # prefect
    def prefect_results(self) -> Path:
        return self.root / ".prefect-results"
