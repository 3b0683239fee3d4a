"""Every metric a leaderboard row carries, defined once: its name, title, one-line description, range, which way is
better, whether it is a part of the summary, and where it is shown. The leaderboard's schema (`LeaderboardRow`, what
`sage schema` prints), the report's tables and notes, the plots, the Prefect artifacts and `sage leaderboard` read
these definitions; a metric's computation lives with its stage (`sage_core.scoring.score` per cross-section,
`sage_core.scoring.core` on background text), and its key is the name defined here.

To add a metric: define it here (`register(Metric(...))`, in the order columns should appear) and compute it under
its name in its stage; nothing else lists metrics.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Better = Literal["higher", "lower", "closer to 1"]
Scope = Literal["task", "core"]


class Metric(BaseModel):
    """One metric of the leaderboard. `scope` "task": computed per cross-section and averaged over those the SAE
    reaches; "core": computed once per SAE on background text (native SAEs only)."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str = Field(description="a table's column header: a few characters")
    description: str = Field(description="one line: what it measures")
    scope: Scope
    low: float | None = Field(description="the least value it can take; None: unbounded below")
    high: float | None = Field(description="the largest value it can take; None: unbounded above")
    better: Better = "higher"
    in_summary: bool = Field(False, description="one of the parts the summary averages (sage_core.scoring.score)")
    table: bool = Field(False, description="a column of the per-task tables (report, terminal)")
    plotted: bool = Field(False, description="a panel of the per-task metric plots")
    range_note: str = Field("", description="why a value can lie outside what a reader expects (a ratio above 1, "
                                            "an unbounded fall)")
    control_note: str = Field("", description="why the random control is, or is not, a floor for it")

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def range_text(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low is None else '['}{lo}, {hi}{')' if self.high is None else ']'}"

    def outside(self, value: float) -> bool:
        """Outside its range (a sign of a bug or a damaged file, never of a bad SAE)."""
        return (self.low is not None and value < self.low - 1e-9) or (self.high is not None and value > self.high + 1e-9)

    def goodness(self, value: float) -> float:
        """`value` turned so that higher is better (NaN stays NaN)."""
        if math.isnan(value):
            return value
        return -abs(1 - value) if self.better == "closer to 1" else -value if self.better == "lower" else value


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is defined twice: give the new one another name")
    METRICS[metric.name] = metric
    return metric


def get(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"no metric named {name!r}; defined: {', '.join(METRICS)}") from None


def names(scope: Scope | None = None, *, table: bool | None = None, plotted: bool | None = None) -> tuple[str, ...]:
    """Defined metrics in order, optionally only those of one scope, in the tables, or plotted."""
    return tuple(m.name for m in METRICS.values() if (scope is None or m.scope == scope)
                 and (table is None or m.table == table) and (plotted is None or m.plotted == plotted))


_EDIT_FLOOR = ("agreement with the ground-truth patch includes the no-intervention floor (prompts the patch does not "
               "change): where the floor is high a small edit scores high; compare edit_gain_k4")

register(Metric(name="summary", title="summary", scope="task", low=0, high=1, table=True, plotted=True,
                description="mean of the summary's parts (faithfulness and necessity clipped to [0, 1], edit gain at "
                            "k=4, mean F1, MCC) at each cross-section"))
register(Metric(name="explained_variance", title="EV", scope="task", low=None, high=1, table=True, plotted=True,
                description="share of the activation's variance the reconstruction explains at the cross-section "
                            "(test prompts)",
                range_note="1 - SSE / SST: a reconstruction worse than the mean activation is below 0, without "
                           "bound"))
register(Metric(name="l0", title="L0", scope="task", low=0, high=None, better="lower", table=True,
                description="mean number of active features per test prompt at the cross-section",
                control_note="set by construction (random_k codes per prompt): a sparsity setting, not a quality "
                             "comparison"))
register(Metric(name="sufficiency", title="suff.", scope="task", low=None, high=None, better="closer to 1",
                table=True, plotted=True,
                description="LD_recon / LD_clean: the logit difference with the reconstruction in place of the "
                            "activation",
                range_note="LD_recon / LD_clean: with the reconstruction in place, the logit difference overshoots the "
                           "clean one. Closer to 1 is better (1.21 is as far off as 0.79); the ground truth's bar "
                           "only asks >= 0.8"))
register(Metric(name="faithfulness", title="faith.", scope="task", low=None, high=None, in_summary=True, table=True,
                description="(LD_recon - LD_meanabl) / (LD_clean - LD_meanabl), where mean ablation leaves room",
                range_note="(LD_recon - LD_meanabl) / (LD_clean - LD_meanabl): the same overshoot, measured from the "
                           "mean-ablation baseline; the summary clips it to 1"))
register(Metric(name="necessity", title="nec.", scope="task", low=None, high=1, in_summary=True, table=True,
                plotted=True,
                description="1 - |LD_meanabl - LD_int| / |LD_meanabl - LD_clean| with only the reconstruction error "
                            "left (a <- mean + error)",
                range_note="1 - |LD_meanabl - LD_int| / |LD_meanabl - LD_clean|: where mean ablation barely moves the "
                           "logit difference, the denominator is small and an error term that moves it goes far below "
                           "0; the summary uses it only where mean ablation leaves room, clipped to [0, 1]"))
register(Metric(name="edit_accuracy_k1", title="edit@1", scope="task", low=0, high=1, control_note=_EDIT_FLOOR,
                description="share of pairs whose prediction after a 1-move sparse edit matches the ground-truth "
                            "patch's"))
register(Metric(name="edit_accuracy_k4", title="edit@4", scope="task", low=0, high=1, table=True, plotted=True,
                control_note=_EDIT_FLOOR,
                description="share of pairs whose prediction after a sparse edit of at most 4 moves matches the "
                            "ground-truth patch's"))
register(Metric(name="edit_gain_k4", title="gain@4", scope="task", low=0, high=1, in_summary=True,
                description="edit accuracy at k=4 above the no-intervention floor, as a share of the room above it"))
register(Metric(name="edit_magnitude_k4", title="mag@4", scope="task", low=None, high=1, better="lower",
                description="weight a 4-move edit removes, relative to the supervised edit's share (0) and the whole "
                            "reconstruction (1)",
                range_note="(s - s_sup) / (1 - s_sup): an edit that removes less than the supervised edit's share is "
                           "below 0, without bound as s_sup nears 1",
                control_note="weight an edit removes relative to the supervised edit's share (0): an edit that "
                             "removes little is small whether or not it follows the patch; read it beside "
                             "edit_gain_k4"))
register(Metric(name="f1_mean", title="F1", scope="task", low=0, high=1, in_summary=True, table=True, plotted=True,
                description="mean over attribute values of the best single feature's F1 at telling that value",
                control_note="its active features are fixed before it sees a prompt, so its F1 is chance: 2p / (1 + "
                             "p) for a value of share p (0.667 for a balanced binary attribute); at or below it, no "
                             "feature tells the value better than an always-on one"))
register(Metric(name="coverage", title="cov.", scope="task", low=0, high=1,
                description="share of attribute values some feature tells with F1 >= 0.6",
                control_note="share of values with F1 >= 0.6, which chance F1 already reaches for a balanced binary "
                             "attribute (0.667): coverage cannot separate SAEs on binary attributes"))
register(Metric(name="mcc", title="MCC", scope="task", low=0, high=1, in_summary=True, table=True, plotted=True,
                description="mean |cos| of the ground-truth directions with the decoder directions, one-to-one "
                            "(Hungarian matching)",
                control_note="decoder directions only"))
register(Metric(name="ce_loss_recovered", title="CE rec.", scope="core", low=None, high=None, table=True,
                description="(CE_zero - CE_sae) / (CE_zero - CE_clean) on background text, the SAE spliced in at "
                            "its hook",
                range_note="(CE_zero - CE_sae) / (CE_zero - CE_clean): with the SAE spliced in, the model's loss on "
                           "background text is lower than the clean model's"))
register(Metric(name="kl", title="KL", scope="core", low=0, high=None, better="lower",
                description="mean KL(p_clean || p_sae) of next-token distributions on background text"))
register(Metric(name="core_explained_variance", title="EV", scope="core", low=None, high=1,
                description="explained variance of the SAE on background text at its hook",
                range_note="1 - SSE / SST: below 0, without bound, for a reconstruction worse than the mean"))
register(Metric(name="core_l0", title="L0", scope="core", low=0, high=None, better="lower",
                description="mean number of active features per token of background text"))
register(Metric(name="dead_share", title="dead", scope="core", low=0, high=1, better="lower",
                description="share of features never active on the background text"))
register(Metric(name="l2_ratio", title="L2 ratio", scope="core", low=0, high=None, better="closer to 1",
                description="mean ||x_hat|| / ||x|| per token of background text: below 1 the SAE shrinks "
                            "activations (SAEBench's l2_ratio)",
                range_note="||x_hat|| / ||x||: a reconstruction longer than its input is above 1"))
