"""Mini-batch K-means: planted blobs, convergence, determinism, degenerate data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainer.search.ihas.kmeans import MiniBatchKMeans


def blobs(k: int = 4, n: int = 6000, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10  # centres ~ 45 apart, unit-variance blobs
    labels = torch.randint(k, (n,), generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def accuracy_up_to_permutation(pred: torch.Tensor, true: torch.Tensor, k: int) -> float:
    return max((torch.tensor(perm)[pred] == true).float().mean().item() for perm in itertools.permutations(range(k)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_blobs_and_stops_on_convergence(seed):
    x, y = blobs(seed=seed)
    km = MiniBatchKMeans(k=4, max_iter=300, tol=1e-3, seed=seed).fit(x, batch_size=512)
    assert km.converged and km.n_iter < 300
    assert km.centroids.shape == (4, 16)
    assert accuracy_up_to_permutation(km.assign(x), y, 4) == 1.0


def test_runs_to_max_iter_when_tolerance_is_unreachable():
    x, _ = blobs()
    km = MiniBatchKMeans(k=4, max_iter=7, tol=0.0, seed=0).fit(x, batch_size=256)
    assert not km.converged and km.n_iter == 7


def test_deterministic_per_seed():
    x, _ = blobs(k=3, n=3000)
    a = MiniBatchKMeans(k=3, seed=5).fit(x, batch_size=256)
    b = MiniBatchKMeans(k=3, seed=5).fit(x, batch_size=256)
    assert torch.equal(a.centroids, b.centroids) and a.n_iter == b.n_iter
    assert torch.equal(a.assign(x), b.assign(x))


def test_step_equals_sculley_per_point_updates():
    g = torch.Generator().manual_seed(3)
    km = MiniBatchKMeans(k=3, seed=0)
    km.partial_fit(torch.randn(50, 4, generator=g))
    km.partial_fit(torch.randn(50, 4, generator=g))
    centroids, counts = km.centroids.clone(), km.counts.clone()
    batch = torch.randn(40, 4, generator=g)
    # Sculley 2010, Algorithm 1: cache nearest centres, then per point c ← (1 − η)c + ηx, η = 1/v[c].
    label = torch.cdist(batch, centroids).argmin(1)
    for x, c in zip(batch, label.tolist()):
        counts[c] += 1
        eta = 1.0 / counts[c].item()
        centroids[c] = (1 - eta) * centroids[c] + eta * x
    km.partial_fit(batch)
    assert torch.allclose(km.centroids, centroids, atol=1e-5)
    assert torch.equal(km.counts, counts)


def test_accepts_numpy_and_iterables_of_batches():
    x, y = blobs(k=2, n=2000)
    from_numpy = MiniBatchKMeans(k=2, seed=0).fit(x.numpy(), batch_size=256)
    assert accuracy_up_to_permutation(from_numpy.assign(x.numpy()), y, 2) == 1.0
    batches = list(torch.split(x, 250))
    from_list = MiniBatchKMeans(k=2, seed=0).fit(batches)  # re-iterable: cycled until converged
    assert from_list.converged
    assert accuracy_up_to_permutation(from_list.assign(x), y, 2) == 1.0
    one_shot = MiniBatchKMeans(k=2, max_iter=100, tol=0.0, seed=0).fit(iter(batches))
    assert one_shot.n_iter == len(batches)  # a one-shot iterator is consumed once


def test_more_clusters_than_distinct_points():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]]).repeat(20, 1)
    km = MiniBatchKMeans(k=5, seed=0).fit(x)
    assert torch.isfinite(km.centroids).all()
    ids = km.assign(x)
    assert ids[0] != ids[1] and set(ids.tolist()) <= set(range(5))
    assert (km.counts > 0).sum() == 2  # the extra centroids stay empty, never assigned
    assert km.converged


def test_empty_centroid_is_moved_to_the_worst_served_point():
    x, y = blobs(k=2, n=400, dim=2)
    km = MiniBatchKMeans(k=2, seed=0)
    km.partial_fit(x[y == 0][:50])  # both centroids start inside blob 0
    km.centroids[1] = torch.tensor([1e4, 1e4])  # and one drifts off where no point is
    km.counts[1] = 0
    km.partial_fit(x)  # every point goes to centroid 0; centroid 1 is refilled
    assert (km.centroids[1] == x).all(dim=1).any()  # it now sits on a data point
    for _ in range(3):
        km.partial_fit(x)
    assert (km.counts > 0).all()
    assert accuracy_up_to_permutation(km.assign(x), y, 2) == 1.0


def test_zero_spread_data_converges_and_assign_needs_fit():
    with pytest.raises(RuntimeError):
        MiniBatchKMeans(k=2).assign(torch.zeros(3, 2))
    km = MiniBatchKMeans(k=2, seed=0).fit(np.ones((100, 3), dtype=np.float32), batch_size=10)
    assert km.converged and torch.isfinite(km.centroids).all()
