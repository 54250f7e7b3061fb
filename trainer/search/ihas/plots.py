"""iHAS figures: dims per field per cluster (paper Fig. 5) and gate-probability histograms
with and without polarization (paper Fig. 3). PNGs next to the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.decisions import Decisions
from trainer.figures import pyplot, save


def write_plots(decisions: Decisions, dim: int, histograms: dict[str, list[int]], out: Path) -> list[str]:
    """Write OUT/dims_per_cluster.png and OUT/gate_probabilities.png; returns their paths.

    Args:
        decisions: the iHAS decisions (clusters with dims per field).
        dim: the searched (full) embedding dim.
        histograms: label → counts of gate probabilities over equal bins of [0, 1].
    """
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    fields = list(decisions.clusters[0].fields)
    dims = np.array([[c.fields[f].dim for f in fields] for c in decisions.clusters])
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(fields), 1.2 + 0.6 * len(dims)))
    im = ax.imshow(dims, cmap="viridis", vmin=0, vmax=dim, aspect="auto")
    ax.set_xticks(range(len(fields)), fields, rotation=45, ha="right")
    ax.set_yticks(range(len(dims)), [f"cluster {c.id} ({c.train_rows:,} rows)" for c in decisions.clusters])
    for (i, j), v in np.ndenumerate(dims):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v < dim / 2 else "black")
    fig.colorbar(im, ax=ax, label="kept dims")
    ax.set_title("iHAS: embedding dims per field per cluster")
    heatmap = save(fig, out / "dims_per_cluster.png")

    fig, axes = plt.subplots(1, len(histograms), figsize=(4.5 * len(histograms), 3.2), squeeze=False)
    for ax, (label, counts) in zip(axes[0], histograms.items()):
        counts = np.asarray(counts, dtype=float)
        edges = np.linspace(0, 1, len(counts) + 1)
        ax.bar(edges[:-1], counts / counts.sum(), width=np.diff(edges), align="edge", edgecolor="black")
        ax.set_title(label)
        ax.set_xlabel("gate keep-probability p")
        ax.set_ylabel("fraction of gates (train rows)")
    return [heatmap, save(fig, out / "gate_probabilities.png")]
