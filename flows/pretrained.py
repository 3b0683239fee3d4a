"""Flow `prepare-pretrained`: a TransformerLens `from_pretrained` model made ready for `evaluate`.

The model is saved once under zoo/<name>/model (config, processed weights, tokenizer), so location search, ground
truth and scoring load it exactly like the built-in model and key their results on its content hash. The tasks' prompt
datasets and the background corpus are built with its own tokenizer (each task keeps the words it spells as one token;
a task it cannot pose is recorded as such). No model or SAE is trained: the SAEs to score come from `--saes`.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import engine
from sage_core.config import ZooConfig
from storage.home import SageHome
from storage.refs import ZooRef
from tasks import zoo as zt
from tasks.common import ManifestSerializer, in_home


@flow(name="prepare-pretrained", flow_run_name="prepare-pretrained {pretrained}",
      task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True, result_serializer=ManifestSerializer())
def prepare_pretrained(pretrained: str, cfg: ZooConfig, home: str | None = None) -> ZooRef:
    """`cfg` is `EvaluateConfig.model_zoo()`: its model name is the pretrained model's zoo directory."""
    h = SageHome(home)
    h.ensure_writable()
    root, name = str(h.root), cfg.model.name
    zt.import_model(pretrained, name, root)  # here: it saves the model once (no device run)
    model, tok = zt.find_model(name, root)
    # each task posed on the model's own tokenizer: words it does not spell as one token dropped, a task it cannot
    # pose recorded as such (the evaluation skips it and says why)
    datasets = in_home(zt.make_dataset, h).map(list(cfg.tasks), unmapped(cfg), unmapped(tok), unmapped(root)).result()
    corpus = in_home(zt.make_corpus, h)(cfg, tok, root)
    model_eval = in_home(zt.evaluate_model, h).submit(model, datasets, root,
                                                      device=engine.current().unit_devices(cfg.device, 1)[0]).result()
    zt.publish_model_eval(pretrained, model_eval, root)
    return ZooRef(model=model, datasets=tuple(datasets), corpus=corpus, model_eval=model_eval)
