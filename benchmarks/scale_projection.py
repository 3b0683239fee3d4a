"""The arithmetic of `benchmarks/scale.py`'s projections: pure functions of figures measured in that run.

The model is deliberately simple: an evaluation costs a fixed start-up plus its scoring units spread evenly over the
workers, each worker scoring at the throughput one worker measured. It ignores contention between workers and the
flow's own dispatch limit, so it is a projection, never a measurement; `scale.py` labels it as one.
"""

from __future__ import annotations

CONTROLS = 2  # the oracle and the random-decoder control score every task beside the SAEs


def n_units(saes: int, tasks: int, controls: int = CONTROLS) -> int:
    """Scoring units of an evaluation: one per (SAE or control) x task."""
    if saes < 0 or tasks < 1 or controls < 0:
        raise ValueError(f"need saes >= 0, tasks >= 1, controls >= 0 (got {saes}, {tasks}, {controls})")
    return (saes + controls) * tasks


def projected_wall(startup_s: float, units: int, workers: int, units_per_s: float) -> float:
    """Seconds for `units` on `workers` workers that each score `units_per_s`, after `startup_s` of start-up."""
    if workers < 1 or units_per_s <= 0 or startup_s < 0:
        raise ValueError(f"need workers >= 1, a positive throughput and a start-up >= 0 (got {workers}, "
                         f"{units_per_s}, {startup_s})")
    return startup_s + units / (workers * units_per_s)


def registry_wall(fixed_s: float, n_saes: int, s_per_sae: float, gpus: int) -> float:
    """Seconds to evaluate `n_saes` SAEs of one model: the model's fixed cost (location search, ground truth, capture,
    references: paid once) plus the per-SAE seconds spread evenly over `gpus` devices."""
    if gpus < 1 or s_per_sae < 0 or fixed_s < 0 or n_saes < 0:
        raise ValueError(f"need gpus >= 1 and non-negative figures (got {gpus}, {s_per_sae}, {fixed_s}, {n_saes})")
    return fixed_s + n_saes * s_per_sae / gpus


def human(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.1 h."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def growth_table(startup_s: float, units_per_s: float, saes: tuple[int, ...] = (10, 100, 1000),
                 tasks: tuple[int, ...] = (1, 4), workers: tuple[int, ...] = (1, 2, 8, 32)) -> list[str]:
    """One line per (SAEs, tasks): the projected wall time on each worker count."""
    head = f"{'SAEs':>6} {'tasks':>5} {'units':>6} | " + " | ".join(f"{w:>3} worker(s)" for w in workers)
    lines = [head, "-" * len(head)]
    for s in saes:
        for t in tasks:
            u = n_units(s, t)
            cells = " | ".join(f"{human(projected_wall(startup_s, u, w, units_per_s)):>13}" for w in workers)
            lines.append(f"{s:>6} {t:>5} {u:>6} | {cells}")
    return lines


def count_registry(model: str = "gpt2-small", hook_part: str = "resid", directory: dict | None = None) -> dict[str, int]:
    """Release -> how many of its SAEs sit at a hook whose name contains `hook_part`, for `model`, in the SAELens
    registry shipped with `sae_lens` (no network). For GPT-2 small the registry's SAE ids are the hook names (some
    with a width suffix: blocks.8.hook_resid_pre_768)."""
    if directory is None:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        directory = get_pretrained_saes_directory()
    out = {}
    for release, entry in sorted(directory.items()):
        if entry.model != model:
            continue
        n = sum(1 for sae_id in entry.saes_map if hook_part in sae_id)
        if n:
            out[release] = n
    return out
