"""Projection check on the built-in zoo: how close do residual SAEs, projected onto a sub-layer place, come to the SAE
trained natively at that place?

1. Explained variance at every attn_out, mlp_out and head (attn.hook_z) place of every layer, on the role positions
   of every task's test prompts: the native sub-layer SAE; the projection P_c(SAE(resid after) - SAE(resid before))
   of the residual TopK family; and the plain difference without P_c. For heads, EV is given both in the head's own
   d_head coordinates (the cross-section's space) and in its write space z W_O[h].
2. From an evaluation's scores.parquet (default: the latest run): at every sub-layer cross-section where both the
   native SAE and the projected family were scored, the rank correlation (Spearman) of their scores across those
   cross-sections, per metric.

    python -m benchmarks.projection [--home ./sage-data] [--family topk-256]
"""

from __future__ import annotations

import argparse
import os
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from sage_core.ground_truth.sections import CrossSection  # noqa: E402
from sage_core.locate.attribution import spearman  # noqa: E402
from sage_core.model.capture import capture_batch  # noqa: E402
from sage_core.model.transformer import pad_sequences  # noqa: E402
from sage_core.scoring import mapping as mp  # noqa: E402
from sage_core.scoring.metrics import explained_variance  # noqa: E402
from storage.atomic import StoreError  # noqa: E402
from storage.datasets import read_prompts  # noqa: E402
from storage.home import SageHome  # noqa: E402
from storage.reports import latest_report  # noqa: E402
from storage.sae_sources import load_sae_spec  # noqa: E402
from storage.scores import run_files  # noqa: E402
from storage.zoo import load_model  # noqa: E402


def role_activations(model, home: SageHome, hooks: list[str], per_task: int) -> dict[str, torch.Tensor]:
    """(n, *trailing) activations at every role position of each task's clean test prompts, tasks stacked."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for path in sorted(home.root.glob("datasets/*/*/prompts.parquet")):
        if path.parent.parent.name == "corpus":
            continue
        df = read_prompts(path).filter((pl.col("split") == "test") & pl.col("pair_of").is_null()).head(per_task)
        roles = [c for c in df.columns if c.startswith("pos_")]
        pos = torch.as_tensor(df.select(roles).to_numpy())
        acts = capture_batch(model, pad_sequences(df["tokens"].to_list(), model.tokenizer.pad_token_id), hooks, pos)
        for h in hooks:
            a = torch.as_tensor(acts[h])
            out[h].append(a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]))
    return {h: torch.cat(v) for h, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=os.environ.get("SAGE_HOME", "./sage-data"))
    ap.add_argument("--model", default="sage-tiny")
    ap.add_argument("--family", default="topk-256", help="residual SAE family projected (needs resid_mid SAEs)")
    ap.add_argument("--native", default="topk-256", help="family of the native sub-layer SAEs")
    ap.add_argument("--prompts", type=int, default=256, help="test prompts per task")
    ap.add_argument("--run", default=None, help="evaluation run for the score correlation (default: latest)")
    args = ap.parse_args()
    h = SageHome(args.home)
    model = load_model(h.model_dir(args.model))
    c = model.cfg

    def sae(hook: str, fam: str):
        return load_sae_spec(f"zoo:{hook}--{fam}", h, args.model)

    places = [(f"blocks.{L}.hook_attn_out", None) for L in range(c.n_layers)]
    places += [(f"blocks.{L}.hook_mlp_out", None) for L in range(c.n_layers)]
    places += [(f"blocks.{L}.attn.hook_z", hd) for L in range(c.n_layers) for hd in range(c.n_heads)]
    hooks = sorted({p for p, _ in places} | {b for p, _ in places for b in mp.bracket(p)})
    hooks = sorted({*hooks, *[mp.canonical_hook(x) for x in hooks]})
    acts = role_activations(model, h, hooks, args.prompts)
    cache: dict[str, tuple] = {}

    def codes(hook: str, fam: str):
        key = f"{hook}--{fam}"
        if key not in cache:
            s = sae(hook, fam)
            x = acts[hook].reshape(len(acts[hook]), -1)
            cache[key] = (s.encode(x), *mp.affine_decoder(s))
        return cache[key]

    rows = []
    for hook, head in places:
        section = CrossSection(hook=hook, head=head, role="*")
        target = acts[hook][:, head] if head is not None else acts[hook]
        f, d, b = codes(hook, args.native)
        native = mp.native(f, d, b, section, d_head=c.d_head).reconstruction()
        before, after = mp.bracket(hook)
        row = {"place": section.label.removesuffix("@*"), "native": explained_variance(target, native)}
        for mapping in ("projection", "difference"):
            if head is not None and mapping == "difference":
                row[mapping] = float("nan")
                continue
            q = mp.write_map(model, section, mapping)
            rec = mp.projected(codes(after, args.family), codes(before, args.family), q).reconstruction()
            row[mapping] = explained_variance(target, rec)
        if head is not None:  # the same comparison in the head's write space (z W_O[h]), where pinv's amplification
            w = model.blocks[mp.parse_hook(hook)[0]].attn.W_O[head].detach()  # of small singular values is undone
            q = mp.write_map(model, section, "projection")
            rec = mp.projected(codes(after, args.family), codes(before, args.family), q).reconstruction()
            row["native_write"] = explained_variance(target @ w, native @ w)
            row["projection_write"] = explained_variance(target @ w, rec @ w)
        rows.append(row)
    table = pl.DataFrame(rows)
    pl.Config.set_tbl_rows(100)
    pl.Config.set_float_precision(3)
    print(f"explained variance at sub-layer places, {args.prompts} test prompts per task, every role position:")
    print(f"  native = {args.native} sub-layer SAE; projection / difference = residual {args.family} family")
    print(table)
    for kind in ("attn_out", "mlp_out", "attn.z"):
        t = table.filter(pl.col("place").str.contains(kind.replace("attn.z", "attn.hook_z")))
        print(f"  mean over {kind:8s}: native {t['native'].mean():.3f}, projection {t['projection'].mean():.3f}, "
              f"difference {t['difference'].drop_nans().mean() if kind != 'attn.z' else float('nan'):.3f}"
              + (f"; in the heads' write space: native {t['native_write'].mean():.3f}, projection "
                 f"{t['projection_write'].mean():.3f}" if kind == "attn.z" else ""))

    try:
        run = args.run or latest_report(h.reports_root()).name
    except StoreError:
        print("no evaluation run to correlate scores with; run `sage evaluate` first")
        return
    s = pl.read_parquet(run_files(h.scores_dir(run))["scores"])
    key = ["task", "hook", "head", "role"]
    native = s.filter((pl.col("mapping") == "native") & pl.col("sae").str.ends_with(f"--{args.native}"))
    proj = s.filter((pl.col("mapping") == "projection") & pl.col("sae").str.starts_with(f"{args.family}:"))
    print(f"\nscores of run {run}: native {args.native} vs projected {args.family}, at every "
          f"sub-layer cross-section both reach")
    for metric in ("summary", "explained_variance", "faithfulness", "edit_accuracy_k4", "f1_mean", "mcc"):
        j = native.filter(pl.col("metric") == metric).join(proj.filter(pl.col("metric") == metric), on=key,
                                                           nulls_equal=True, suffix="_proj")
        j = j.filter(pl.col("value").is_not_nan() & pl.col("value_proj").is_not_nan())
        if len(j) < 3:
            print(f"  {metric:20s}: {len(j)} shared cross-sections, too few for a rank correlation")
            continue
        rho = spearman(np.asarray(j["value"]), np.asarray(j["value_proj"]))
        print(f"  {metric:20s}: Spearman {rho:+.2f} over {len(j)} cross-sections; mean native {j['value'].mean():.3f}"
              f", projected {j['value_proj'].mean():.3f}")


if __name__ == "__main__":
    from benchmarks.record import recording

    with recording("projection"):
        main()
