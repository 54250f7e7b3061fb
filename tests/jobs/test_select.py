"""Picking a sparsity setting from a sweep on validation only: the one-standard-error rule."""

import math

import numpy as np
import pytest

from trainer.jobs.select import auc_standard_error, main, pick


@pytest.mark.parametrize("n1,n2", [(100, 100), (40, 300)])
def test_the_auc_standard_error_at_chance_is_the_mann_whitney_null_variance(n1, n2):
    assert auc_standard_error(0.5, n1, n2) == pytest.approx(math.sqrt((n1 + n2 + 1) / (12 * n1 * n2)), rel=1e-12)


def test_the_auc_standard_error_matches_a_bootstrap():
    """Binormal scores: the formula's SE within 25% of 2,000 bootstrap AUCs' std (it assumes
    exponential score distributions and overstates binormal ones' SE, here by ~16%)."""
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.2, 1, 400), rng.normal(0, 1, 1600)

    def auc(p, n):
        return (p[:, None] > n[None, :]).mean()

    boot = [auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(2000)]
    assert auc_standard_error(auc(pos, neg), len(pos), len(neg)) == pytest.approx(np.std(boot), rel=0.25)


def test_one_se_picks_the_most_regularised_point_within_one_standard_error():
    vals = [0.800, 0.810, 0.805, 0.803, 0.790]  # least to most regularised
    assert pick(vals, "best", 0.008) == 1
    assert pick(vals, "one_se", 0.008) == 3  # 0.803 >= 0.810 - 0.008; 0.790 is not
    assert pick(vals, "one_se", 0.006) == 2
    assert pick(vals, "one_se", 0.0) == 1


def test_a_bad_sweep_point_exits_2_with_one_line(tmp_path, capsys):
    assert main(["--row", "autofis", "--sweep", f"0.2={tmp_path / 'missing'}"]) == 2
    assert main(["--row", "autofis", "--sweep", f"0.2={tmp_path}"]) == 2  # no seed_<s> runs in it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
