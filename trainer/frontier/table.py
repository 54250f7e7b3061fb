"""Points over seeds → one row per (scheme, setting), the frontier over those rows, and the markdown table."""

from __future__ import annotations

import numpy as np

from trainer.frontier.pareto import pareto_front

REFERENCE = "fe_fp32"  # the uncompressed model the "× fewer bytes" column compares with
SHRINK = 10  # the table names the best row with at least this many times fewer bytes than the reference


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def group_points(points: list[dict]) -> list[dict]:
    """One row per (scheme, label): seed means and sample std (ddof 1; 0 with one seed), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in points:
        groups.setdefault((p["scheme"], p["label"]), []).append(p)
    rows = []
    for (scheme, label), ps in groups.items():
        row = {"scheme": scheme, "label": label, "seeds": [p["seed"] for p in ps]}
        for k in ("test_auc", "test_logloss", "served_bytes", "served_table_bytes", "stored_bytes", "infer_s_per_10k"):
            values = [p[k] for p in ps]
            row[k], row[f"{k}_std"] = float(np.mean(values)), _std(values)
        low = [p["test_auc_low"] for p in ps if p.get("test_auc_low") is not None]
        row["test_auc_low"] = float(np.mean(low)) if len(low) == len(ps) else None
        row["auc_vs_reference"] = [p[f"auc_vs_{REFERENCE}"] for p in ps if f"auc_vs_{REFERENCE}" in p]
        rows.append(row)
    return rows


def mark_frontier(rows: list[dict]) -> list[int]:
    """Sets row["on_frontier"] (mean bytes vs mean AUC) and returns the frontier's row indices by bytes."""
    front = pareto_front([(r["served_bytes"], r["test_auc"]) for r in rows])
    for i, r in enumerate(rows):
        r["on_frontier"] = i in front
    return front


def best_shrunk(rows: list[dict]) -> dict | None:
    """The highest-AUC row with served bytes <= the reference's / SHRINK (None without one or without the reference)."""
    ref = next((r for r in rows if r["scheme"] == REFERENCE), None)
    if ref is None:
        return None
    small = [r for r in rows if r["served_bytes"] * SHRINK <= ref["served_bytes"]]
    return max(small, key=lambda r: r["test_auc"], default=None)


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, ordered by bytes; frontier rows marked."""
    ref = next((r for r in rows if r["scheme"] == REFERENCE), None)
    lines = ["| scheme | setting | served bytes | × fewer than FE fp32 | stored bytes | test AUC | logloss | "
             "low-freq rows AUC | AUC − FE fp32 [95% paired bootstrap], per seed | s / 10k rows | frontier |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["served_bytes"]):
        ratio = f"{ref['served_bytes'] / r['served_bytes']:.1f}" if ref else ""
        pm = len(r["seeds"]) > 1
        auc = f"{r['test_auc']:.4f}" + (f" ± {r['test_auc_std']:.4f}" if pm else "")
        ll = f"{r['test_logloss']:.4f}" + (f" ± {r['test_logloss_std']:.4f}" if pm else "")
        low = f"{r['test_auc_low']:.4f}" if r.get("test_auc_low") is not None else "-"
        diff = "; ".join(f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" for d in r.get("auc_vs_reference", [])) or "-"
        lines.append(f"| {r['scheme']} | {r['label']} | {r['served_bytes']:,.0f} | {ratio} | {r['stored_bytes']:,.0f} | {auc} | {ll} | "
                     f"{low} | {diff} | {r['infer_s_per_10k']:.4f} | {'yes' if r['on_frontier'] else ''} |")
    best = best_shrunk(rows)
    if ref is not None:
        if best is None:
            lines.append(f"\nNo point stores ≥ {SHRINK}× fewer bytes than FE fp32 ({ref['served_bytes']:,.0f}).")
        else:
            lines.append(f"\nBest point at ≥ {SHRINK}× fewer bytes than FE fp32: {best['scheme']} {best['label']}, "
                         f"{best['served_bytes']:,.0f} bytes ({ref['served_bytes'] / best['served_bytes']:.1f}× fewer), "
                         f"test AUC {best['test_auc']:.4f} vs FE fp32 {ref['test_auc']:.4f} "
                         f"({best['test_auc'] - ref['test_auc']:+.4f}).")
    return "\n".join(lines)
