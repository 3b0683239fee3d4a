"""Flow `prepare-pretrained`: a TransformerLens `from_pretrained` model made ready for `evaluate`.

The model is saved once under zoo/<name>/model (config, processed weights, tokenizer), so location search, ground
truth and scoring load it exactly like the built-in model and key their results on its content hash. The tasks' prompt
datasets and the background corpus are built with its own tokenizer; a task whose names or answers its tokenizer
splits fails with the word to drop. No model or SAE is trained: the SAEs to score come from `--saes`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sage_core.config import ZooConfig
from storage.hashing import dir_hash
from storage.home import SageHome
from tasks import zoo as zt
from tasks.common import ManifestSerializer, in_home


@flow(name="prepare-pretrained", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True,
      result_serializer=ManifestSerializer())
def prepare_pretrained(pretrained: str, cfg: ZooConfig, home: str | None = None) -> dict[str, Any]:
    """`cfg` is `EvaluateConfig.model_zoo()`: its model name is the pretrained model's zoo directory."""
    h = SageHome(home)
    h.ensure_writable()
    root, name = str(h.root), cfg.model.name
    model = zt.import_model(pretrained, name, root)
    tok = {"path": h.relative(h.tokenizer_dir(name)), "hash": dir_hash(h.tokenizer_dir(name))}
    datasets = [d.result() for d in in_home(zt.make_dataset, h).map(list(cfg.tasks), unmapped(cfg), unmapped(tok),
                                                                     unmapped(root))]
    corpus = in_home(zt.make_corpus, h)(cfg, tok, root)
    model_eval = in_home(zt.evaluate_model, h)(model, datasets, root)
    create_table_artifact(key="pretrained-task-metrics", table=model_eval["rows"],
                          description=f"{pretrained}: accuracy and logit difference per task (held-out prompts)")
    for row in model_eval["rows"]:
        if row["accuracy"] < 0.6:
            print(f"warning: {pretrained} solves {row['task']} on only {row['accuracy']:.0%} of test prompts; "
                  "its ground truth there says little")
    return {"home": root, "model": model, "datasets": datasets, "corpus": corpus, "model_eval": model_eval,
            "saes": []}
