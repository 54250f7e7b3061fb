"""The Pareto frontier of (bytes, AUC): fewer bytes and higher AUC win; ties stay."""

import math
import random

from trainer.frontier.pareto import pareto_front


def dominated(p, q) -> bool:
    """q dominates p: no more bytes, no less AUC, better in one."""
    return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])


def test_dominated_points_are_excluded_and_the_rest_sorted_by_bytes():
    points = [(100, 0.70), (10, 0.60), (50, 0.72), (60, 0.71), (5, 0.55), (200, 0.72)]
    # (100, .70) and (60, .71) lose to (50, .72); (200, .72) has the AUC of (50, .72) at more bytes
    assert pareto_front(points) == [4, 1, 2]


def test_exact_ties_all_stay_on_the_frontier():
    points = [(10, 0.6), (10, 0.6), (20, 0.7), (20, 0.7)]
    assert sorted(pareto_front(points)) == [0, 1, 2, 3]


def test_equal_bytes_keep_only_the_highest_auc_and_equal_auc_keeps_the_fewest_bytes():
    assert pareto_front([(10, 0.6), (10, 0.65), (10, 0.62)]) == [1]
    assert pareto_front([(30, 0.7), (10, 0.7), (20, 0.7)]) == [1]


def test_nan_auc_never_reaches_the_frontier_and_empty_input_gives_nothing():
    assert pareto_front([(1, math.nan), (2, 0.6)]) == [1]
    assert pareto_front([(1, math.nan)]) == []
    assert pareto_front([]) == []


def test_matches_the_definition_on_random_points_with_many_ties():
    rng = random.Random(0)
    for _ in range(200):
        # few distinct values so that equal bytes, equal AUC and exact duplicates are common
        points = [(rng.randint(1, 6), rng.randint(0, 5) / 10) for _ in range(rng.randint(1, 12))]
        expected = {i for i, p in enumerate(points) if not any(dominated(p, q) for q in points)}
        front = pareto_front(points)
        assert set(front) == expected
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)
