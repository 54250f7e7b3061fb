"""Scoring a searched set of interactions against the ones a synthetic generator planted."""

from __future__ import annotations


def planted_scores(kept: list[tuple[str, ...]], planted: list[list[str]], order: int = 2) -> dict:
    """Precision / recall of the kept tuples of one order against the planted tuples of that
    order; kept tuples that lie inside a planted tuple of a higher order are counted apart
    (a search of this order can only see parts of those)."""
    same = {frozenset(t) for t in planted if len(t) == order}
    higher = [set(t) for t in planted if len(t) > order]
    found = {frozenset(k) for k in kept}
    hit = found & same
    return {"order": order, "planted": len(same), "kept": len(found), "true_positives": len(hit),
            "precision": len(hit) / len(found) if found else None,
            "recall": len(hit) / len(same) if same else None,
            "kept_inside_planted_higher_order": sum(1 for k in found - same if any(k <= t for t in higher))}
