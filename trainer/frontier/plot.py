"""frontier.png: test AUC against served bytes (log scale), one marker per scheme, the
Pareto frontier as a line, seeds as error bars (± one sample std of AUC)."""

from __future__ import annotations

from pathlib import Path

from trainer.figures import pyplot, save


def plot_frontier(rows: list[dict], front: list[int], path: Path, title: str) -> None:
    """Write the figure for the grouped rows of trainer.frontier.table (front: their frontier indices by bytes)."""
    fig, ax = pyplot().subplots(figsize=(8, 5.5))
    markers = "osD^v<>pXh*"
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    for k, scheme in enumerate(schemes):
        mine = [r for r in rows if r["scheme"] == scheme]
        ax.errorbar([r["served_bytes"] for r in mine], [r["test_auc"] for r in mine],
                    yerr=[r["test_auc_std"] for r in mine], fmt=markers[k % len(markers)], capsize=3, label=scheme)
        for r in mine:
            ax.annotate(r["label"], (r["served_bytes"], r["test_auc"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if front:
        ax.plot([rows[i]["served_bytes"] for i in front], [rows[i]["test_auc"] for i in front], "k--", lw=1,
                label="Pareto frontier", zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("served bytes (everything the bundle stores to score a row; log scale)")
    ax.set_ylabel("test AUC (scored through the bundle)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)
