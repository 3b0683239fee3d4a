"""The location search's figure: AtP per layer x head and per layer x sub-layer site (a pyplot-free matplotlib
`Figure`; the locate stage saves it with its results). Apart from the report's figures and imports no project module:
the locate stage's cache key follows this module's code, so editing a report figure or table re-runs no location
search."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")


def _strongest(values: list[float]) -> float:
    return max(values, key=abs) if values else 0.0


def atp_heatmaps(rows: list[dict], n_layers: int, n_heads: int, title: str) -> Figure:
    """Two panels: layer x head and layer x sub-layer site; each cell is its AtP of largest magnitude over roles."""
    heads = np.zeros((n_layers, n_heads))
    sites = np.zeros((n_layers, len(SITES)))
    cells_h: dict[tuple[int, int], list[float]] = {}
    cells_s: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        if r["kind"] == "head":
            cells_h.setdefault((r["layer"], r["head"]), []).append(r["atp"])
        elif r["kind"] in SITES:
            cells_s.setdefault((r["layer"], SITES.index(r["kind"])), []).append(r["atp"])
    for (i, j), v in cells_h.items():
        heads[i, j] = _strongest(v)
    for (i, j), v in cells_s.items():
        sites[i, j] = _strongest(v)
    fig = Figure(figsize=(10, 0.6 * n_layers + 2.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, data, xlabels, name in ((axes[0], heads, [str(h) for h in range(n_heads)], "head"),
                                    (axes[1], sites, list(SITES), "site")):
        lim = float(np.abs(data).max()) or 1.0
        im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=30 if name == "site" else 0)
        ax.set_yticks(range(n_layers), [f"L{i}" for i in range(n_layers)])
        ax.set_xlabel(name)
        for (i, j), v in np.ndenumerate(data):
            if v:
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8, label="AtP (strongest role)")
    fig.suptitle(title)
    return fig
