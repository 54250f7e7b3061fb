"""Low-frequency rows and paired-bootstrap intervals of the frontier's AUC differences."""

import numpy as np
import pytest

from trainer.frontier.intervals import _Ranked, low_frequency_rows, paired_bootstrap, rank_auc
from trainer.metrics import auc


def test_rank_auc_equals_the_trapezoidal_auc_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.3).astype(np.float32)
    probs = np.round(rng.random(3000) * 0.5 + labels * 0.2, 2)  # rounded: many ties, across classes too
    # trainer.metrics.auc returns a float32: equal to its rounding
    assert rank_auc(probs, labels) == pytest.approx(auc(probs, labels), abs=1e-6)


def test_a_resample_scored_from_counts_equals_rank_auc_of_the_drawn_rows():
    rng = np.random.default_rng(2)
    labels = (rng.random(2000) < 0.3).astype(np.float32)
    probs = np.round(rng.random(2000) * 0.5 + labels * 0.2, 2)  # ties inside and across classes
    ranked = _Ranked(probs)
    for _ in range(5):
        rows = rng.integers(0, 2000, 2000)
        counts = np.bincount(rows, minlength=2000).astype(np.float64)
        # the same Mann-Whitney sums in another order: equal to float64 rounding
        assert ranked.auc(counts, labels) == pytest.approx(rank_auc(probs[rows], labels[rows]), abs=1e-12)


def test_paired_bootstrap_of_a_model_against_itself_and_against_a_worse_one():
    rng = np.random.default_rng(1)
    labels = (rng.random(4000) < 0.3).astype(np.float32)
    good = labels + rng.normal(0, 1.0, 4000)
    worse = good + rng.normal(0, 1.0, 4000)  # the same model with more noise: its errors share good's
    same = paired_bootstrap(good, good, labels, resamples=50)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0  # the same rows every resample: no spread at all
    d = paired_bootstrap(worse, good, labels, resamples=100)
    assert d["lo"] <= d["diff"] <= d["hi"] < 0  # clearly worse: the whole interval below 0
    # pairing removes the shared row noise: the interval is narrower than one model's own bootstrap spread
    own = [rank_auc(worse[r], labels[r]) for r in (rng.integers(0, 4000, 4000) for _ in range(100))]
    assert d["hi"] - d["lo"] < np.quantile(own, 0.975) - np.quantile(own, 0.025)


class _Data:
    """The dataset members low_frequency_rows reads: 6 rows, test = rows 1, 3, 4, 5.

    a: id 3 is rare (train count 2); bag g: id 2 is rare (count 1); id 0 (OOV) never counts.
    Test rows: 1 (a = 2, g = [2, 1]: rare in g), 3 (a = 0, g = [1, 2]: rare in g),
    4 (a = 1, g = [1]: none), 5 (a = 3: rare in a, g = []).
    """

    ids = {"a": np.array([1, 2, 3, 0, 1, 3])}
    bags = {"g": (np.array([0, 1, 3, 3, 5, 6, 6]), np.array([1, 2, 1, 1, 2, 1]))}
    id_counts = {"a": np.array([0, 50, 30, 2]), "g": np.array([0, 40, 1])}

    def indices(self, split):
        return np.array([1, 3, 4, 5]) if split == "test" else np.array([0, 2])


def test_low_frequency_rows_by_train_counts():
    ds = _Data()
    assert low_frequency_rows(ds, "test", 20).tolist() == [True, True, False, True]
    assert low_frequency_rows(ds, "test", 2).tolist() == [True, True, False, False]  # only g's id 2 (count 1) < 2
