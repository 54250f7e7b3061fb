"""The Pareto frontier of (served bytes, test AUC): fewer bytes and higher AUC are better."""

from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, in order of increasing bytes.

    A point (bytes b, AUC a) is dominated when another point has b' <= b and a' >= a with
    at least one of the two strict. Points equal in both (a tie) do not dominate each
    other: all of them stay on the frontier, so a reader sees every scheme that reaches it.

    Args:
        points: (bytes, auc) pairs; NaN AUC never reaches the frontier.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")  # highest AUC among points with strictly fewer bytes than the current group
    k = 0
    while k < len(order):
        group_bytes = points[order[k]][0]
        group = []
        while k < len(order) and points[order[k]][0] == group_bytes:
            group.append(order[k])
            k += 1
        top = max((points[i][1] for i in group if points[i][1] == points[i][1]), default=None)
        if top is None:
            continue
        if top > best:
            # within one byte count only the highest AUC (and its exact ties) survive
            front += [i for i in group if points[i][1] == top]
            best = top
    return front
