"""The report's figures are legible as the Prefect UI shows them (issue 26): nothing drawn outside the figure, no two
labels on top of each other, and the metrics figure about 1000 px wide with the tables' short SAE names."""

from __future__ import annotations

import io
import itertools
from unittest import mock

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from report.figures import f1_heatmap, metric_panels
from report.tables import short_sae
from storage.reports import PLOT_DPI, PLOT_METRICS

ZOO = ["blocks.0.hook_resid_post--topk-64", "blocks.0.hook_resid_pre--standard-64",
       "topk-64:projection[L0.resid_mid->L0.resid_post]", "blocks.0.attn.hook_z--jumprelu-64",
       "control:oracle", "control:random"]


def _texts(fig: Figure) -> list[tuple[Text, object]]:
    """Every non-empty text the figure draws, with its extent in pixels (recorded while drawing: a tick outside the
    view keeps a label that is never drawn)."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    drawn: dict[int, Text] = {}
    draw = Text.draw

    def record(self, r):
        drawn[id(self)] = self
        return draw(self, r)

    with mock.patch.object(Text, "draw", record):
        fig.draw(renderer)
    return [(t, t.get_window_extent(renderer)) for t in drawn.values() if t.get_visible() and t.get_text().strip()]


def _assert_legible(fig: Figure, inside_cells: set[int] = frozenset()) -> None:
    """No text outside the figure; no two texts overlapping (but those drawn on the data: cell values, n/a, ...)."""
    box = fig.bbox
    texts = _texts(fig)
    for t, ext in texts:
        assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1 and box.y0 - 1 <= ext.y0 and ext.y1 <= box.y1 + 1, \
            f"clipped: {t.get_text()!r} {ext} outside {box}"
    labels = [(t, ext) for t, ext in texts if id(t) not in inside_cells]
    for (a, ea), (b, eb) in itertools.combinations(labels, 2):
        overlap_x = min(ea.x1, eb.x1) - max(ea.x0, eb.x0)
        overlap_y = min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
        assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{a.get_text()!r} overlaps {b.get_text()!r}"


def _data_texts(fig: Figure) -> set[int]:
    return {id(t) for ax in fig.axes for t in ax.texts if t.get_text() not in _group_labels(fig)}


def _group_labels(fig: Figure) -> set[str]:
    return {t.get_text() for t in fig.axes[0].texts if t.get_fontweight() == "bold"}


def _sva_scores(attrs: dict[str, list[str]], task: str = "sva") -> pl.DataFrame:
    rows = [dict(sae=s, task=task, hook="h", head=None, role="END", mapping="native", metric=f"f1:{a}={v}",
                 value=0.1 * (i % 10)) for i, s in enumerate(ZOO) for a, vs in attrs.items() for v in vs]
    return pl.DataFrame(rows, schema={"sae": pl.String, "task": pl.String, "hook": pl.String, "head": pl.Int64,
                                      "role": pl.String, "mapping": pl.String, "metric": pl.String,
                                      "value": pl.Float64})


def test_a_heatmap_with_long_attribute_names_and_title_clips_and_overlaps_nothing():
    """sva's two attributes of two values each: 'subject_number' and 'attractor_number' overlapped above their two
    columns, and the title ran out of the figure ("(max over cross-sectio")."""
    for attrs, part in (({"subject_number": ["pl", "sg"], "attractor_number": ["pl", "sg"]}, ""),
                        ({"subject_number": ["pl", "sg"], "attractor_number": ["pl", "sg"],
                          "a_very_long_attribute_name_of_one_value": ["x"],
                          "position": ["ABB", "BAB", "a rather long value text"]},
                         " (subject_number, attractor_number, a_very_long_attribute_name_of_one_value; 1 of 2)")):
        fig = f1_heatmap(_sva_scores(attrs), "sva", part=part)
        _assert_legible(fig, _data_texts(fig))
        title = " ".join(fig.get_suptitle().split())
        assert title == f"sva: best F1 per attribute value (max over cross-sections){part}"
        assert _group_labels(fig) and all(n.replace("\n", "") in attrs for n in _group_labels(fig))
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [short_sae(s) for s in ZOO]


def test_a_heatmap_without_scores_clips_nothing():
    """Its title ran off the figure's left edge, centred over a one-column grid."""
    fig = f1_heatmap(_sva_scores({"number": ["pl"]}), "a_task_without_any_scores")
    assert not fig.axes[0].images
    _assert_legible(fig)


def test_a_wide_heatmap_clips_and_overlaps_nothing():
    names = ["Alice", "Bob", "Christopher", "Dominique", "Elisabeth", "Frank"] * 5
    fig = f1_heatmap(_sva_scores({"IO": [f"{n}{i}" for i, n in enumerate(names)], "Pos": ["ABB", "BAB"]}, "ioi"), "ioi")
    _assert_legible(fig, _data_texts(fig))


def test_the_metrics_figure_is_about_1000_px_wide_with_short_names_and_nothing_clipped():
    """It was 1871 px wide, shown at 0.56x in a 1046 px box with 5-6 px tall labels and long SAE names."""
    rows = [dict(sae=s, task="sva", kind="oracle" if "oracle" in s else "random" if "random" in s else "trained",
                 mapping="native", summary=0.1 * i, n_sections=2, **{m: 0.1 * i - (700.0 if i == 2 and
                                                                                    m == "necessity" else 0)
                                                                     for m in PLOT_METRICS if m != "summary"})
            for i, s in enumerate(ZOO * 3)]
    board = pl.DataFrame(rows).with_columns(pl.col("sae") + pl.Series([""] * 6 + ["-b"] * 6 + ["-c"] * 6))
    fig = metric_panels(board, "sva", PLOT_METRICS)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=PLOT_DPI)
    width = Image.open(io.BytesIO(buf.getvalue())).width
    assert 900 <= width <= 1100, width
    names = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert names == {short_sae(s) for s in board["sae"]} and not any("--" in n for n in names)
    assert min(t.get_fontsize() for ax in fig.axes for t in ax.get_yticklabels()) >= 7
    inside = {id(t) for ax in fig.axes for t in ax.texts}  # n/a and cut values, drawn on the bars
    _assert_legible(fig, inside)
    assert len({t.get_text().split("\n")[0] for ax in fig.axes if (t := ax.title).get_text()}) == len(
        [m for m in PLOT_METRICS if m in board.columns])


def test_an_unannotated_heatmap_of_ioi_s_size_fits_the_ui_s_box():
    """13 SAEs by IOI's 27 name values was 1446 px wide, shown at 0.72x in the UI's ~1046 px box: cells without
    numbers in them need no room for the numbers."""
    saes = [f"blocks.{i}.hook_resid_post--topk-64" for i in range(11)] + ["control:oracle", "control:random"]
    names = {"IO": [f"Name{i}" for i in range(13)], "S": [f"Name{i}" for i in range(12)], "Pos": ["ABB", "BAB"]}
    rows = [dict(sae=s, task="ioi", hook="h", head=None, role="END", mapping="native", metric=f"f1:{a}={v}",
                 value=0.5) for s in saes for a, vs in names.items() for v in vs]
    fig = f1_heatmap(pl.DataFrame(rows), "ioi")
    assert not any(t.get_text() == "0.50" for t in fig.axes[0].texts)  # too many cells to write out
    buf = io.BytesIO()
    fig.savefig(buf, dpi=PLOT_DPI)
    assert Image.open(io.BytesIO(buf.getvalue())).width <= 1100
    _assert_legible(fig, _data_texts(fig))
