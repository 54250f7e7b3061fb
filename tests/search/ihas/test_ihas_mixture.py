"""The id mixture behind iHAS-ids: EM recovers planted groups from ids alone, its
parameters are distributions, a bag counts as one observation, and the router's
TorchRec lookup gives the E-step's most likely cluster."""

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from serving.features import FeatureSpec, Field
from trainer.search.ihas.mixture import FieldIds, MixtureRouter, _m_step, best_mixture, fit_mixture


def planted(n: int, seed: int = 0):
    """Two groups; in each of 3 fields a group draws its ids from its own half of a 20-id vocabulary 90% of the time."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 2, n)
    fields = []
    for _ in range(3):
        own = rng.random(n) < 0.9
        ids = np.where(own, 1 + groups * 10 + rng.integers(0, 10, n), rng.integers(1, 21, n))
        fields.append(FieldIds(np.arange(n), ids, np.ones(n), 21))
    return fields, groups


def test_em_recovers_planted_groups_and_its_parameters_are_distributions():
    fields, groups = planted(4000)
    fit = best_mixture(fields, 4000, 2, range(3))
    assert np.exp(fit.log_prior).sum() == pytest.approx(1.0)
    for lt in fit.log_theta:
        assert np.allclose(np.exp(lt).sum(axis=0), 1.0)
    ll = fit.log_prior + sum(lt[f.ids] for lt, f in zip(fit.log_theta, fields))
    assign = ll.argmax(axis=1)
    agree = max((assign == groups).mean(), (assign != groups).mean())
    assert agree > 0.99  # 3 fields at 90% each: the Bayes rate is about 0.997
    # restarts keep the most likely fit
    assert fit.loglik == max(fit_mixture(fields, 4000, 2, s).loglik for s in range(3))


def test_a_bag_counts_as_one_observation():
    """Row 0 holds the bag {1, 2}, row 1 the single id 3: with row 0 all in cluster 0,
    ids 1 and 2 each get half a count there."""
    f = FieldIds(rows=np.array([0, 0, 1]), ids=np.array([1, 2, 3]), weights=np.array([0.5, 0.5, 1.0]), vocab=4)
    resp = np.array([[1.0, 0.0], [0.0, 1.0]])
    _, (lt,) = _m_step([f], resp)
    # cluster 0: counts (0, .5, .5, 0) + 1 smoothing each over 1 row + 4 → (1, 1.5, 1.5, 1) / 5
    assert np.allclose(np.exp(lt[:, 0]), [0.2, 0.3, 0.3, 0.2])


def test_router_lookup_is_the_most_likely_cluster():
    fields, _ = planted(2000, seed=1)
    fit = fit_mixture(fields, 2000, 2, 0)
    spec = FeatureSpec("t", "label", tuple(Field(f"f{i}", "categorical", tuple(str(v) for v in range(20))) for i in range(3)))
    router = MixtureRouter(spec, fit.log_theta, torch.from_numpy(fit.log_prior))
    n = 300
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(3)], values=torch.from_numpy(np.concatenate([f.ids[:n] for f in fields])).long(),
        lengths=torch.ones(3 * n, dtype=torch.int32))
    got = router(torch.zeros(n, 0), kjt).numpy()
    want = (fit.log_prior + sum(lt[f.ids[:n]] for lt, f in zip(fit.log_theta, fields))).argmax(axis=1)
    assert (got == want).all()
