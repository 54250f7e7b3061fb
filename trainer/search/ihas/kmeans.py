"""Mini-batch K-means (Sculley 2010) for the iHAS clustering stage.

Each step assigns a mini-batch to the nearest centroids (Euclidean) and moves each
centroid c toward its assigned points with per-point learning rate 1/count(c), count
being the number of points c has absorbed so far. With assignments fixed at the start
of the batch, Sculley's per-point loop equals the closed form
    c ← c + (Σ_{x→c} x − m_c·c) / (count_c + m_c),
so a step is vectorised over the batch; it is a running mean of everything assigned.

Initialisation: k-means++ on the first mini-batch with a seeded generator; counts start
at 0, so a centroid's first update replaces it by the mean of its first assigned points.

Convergence: stop when the largest centroid move of a step is below ``tol`` times the
RMS spread of the first batch (sqrt of its mean squared distance to its mean), for
``PATIENCE`` consecutive steps (one quiet batch can be luck), or after ``max_iter``
steps. Relative, because masked embeddings have no fixed scale.

Degenerate data: when a batch has fewer distinct points than k, k-means++ has no
distance mass left and repeats a chosen point; duplicated centroids stay empty because
``assign`` breaks ties towards the lowest index. After every step, a centroid that has
still absorbed no point is moved to the batch point farthest from all centroids, unless
every batch point already is a centroid. So empty clusters are filled whenever the data
allow it and otherwise stay empty (never assigned, never NaN).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_float_tensor(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.float()


def sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[n, k] squared Euclidean distances, clamped at 0 against cancellation."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_(min=0)


class MiniBatchKMeans:
    """Mini-batch K-means with per-centroid 1/count learning rates.

    Args:
        k: number of clusters.
        max_iter: maximum number of mini-batch steps per ``fit`` call.
        tol: stop threshold on the per-step centroid move, relative to the data's RMS spread.
        seed: seed for the k-means++ init and for shuffling array input.
    """

    PATIENCE = 3

    def __init__(self, k: int, max_iter: int = 300, tol: float = 1e-3, seed: int = 0):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.k = k
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self.centroids: torch.Tensor | None = None  # [k, D], exportable as is
        self.counts: torch.Tensor | None = None  # [k] points absorbed per centroid
        self.n_iter = 0  # mini-batch steps taken, over all fit/partial_fit calls
        self.converged = False
        self._scale = 0.0

    # -- core steps ------------------------------------------------------------------

    def _init(self, x: torch.Tensor) -> None:
        """k-means++ seeding on the first batch (D² sampling, seeded)."""
        n = x.shape[0]
        first = int(torch.randint(n, (1,), generator=self._gen))
        chosen = [first]
        d2 = sq_dists(x, x[first : first + 1]).squeeze(1)
        for _ in range(1, self.k):
            total = d2.sum()
            if total > 0:
                nxt = int(torch.multinomial((d2 / total).cpu().double(), 1, generator=self._gen))
            else:
                # No distinct point left: repeat one; the duplicate stays empty (module doc).
                nxt = chosen[0]
            chosen.append(nxt)
            d2 = torch.minimum(d2, sq_dists(x, x[nxt : nxt + 1]).squeeze(1))
        self.centroids = x[chosen].clone()
        self.counts = torch.zeros(self.k, dtype=torch.float64, device=x.device)
        self._scale = float((x - x.mean(0)).pow(2).sum(1).mean().sqrt())

    def partial_fit(self, batch: ArrayLike) -> float:
        """One Sculley step on a mini-batch (initialises on the first call).

        Args:
            batch: [n, D] points.

        Returns:
            The largest centroid move of this step (Euclidean).
        """
        x = _as_float_tensor(batch)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"expected a non-empty [n, D] batch, got {tuple(x.shape)}")
        if self.centroids is None:
            self._init(x)
        elif x.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"batch has {x.shape[1]} features, centroids have {self.centroids.shape[1]}")
        x = x.to(self.centroids)
        old = self.centroids.clone()
        d2 = sq_dists(x, self.centroids)
        label = d2.argmin(1)
        m = torch.bincount(label, minlength=self.k).to(self.counts.dtype)
        sums = torch.zeros_like(self.centroids).index_add_(0, label, x)
        self.counts += m
        # Running-mean form of Sculley's per-point updates (module docstring); a centroid
        # with no point in this batch gets a zero step (sums and m are 0).
        denom = self.counts.clamp(min=1).to(x.dtype).unsqueeze(1)
        self.centroids = self.centroids + (sums - m.to(x.dtype).unsqueeze(1) * self.centroids) / denom
        self._refill_empty(x)
        self.n_iter += 1
        return float((self.centroids - old).norm(dim=1).max())

    def _refill_empty(self, x: torch.Tensor) -> None:
        """Move never-used centroids onto the batch points farthest from every centroid."""
        for idx in (self.counts == 0).nonzero().flatten().tolist():
            d2 = sq_dists(x, self.centroids).min(1).values
            far = int(d2.argmax())
            if d2[far] <= 0:  # every batch point already is a centroid: nothing to take
                return
            self.centroids[idx] = x[far]

    # -- driver ----------------------------------------------------------------------

    def _batches(self, data: ArrayLike | Iterable[ArrayLike], batch_size: int) -> Iterator[ArrayLike]:
        """Mini-batches: shuffled epochs over an array, or the items of an iterable
        (cycled while it can be re-iterated, a one-shot iterator is used once)."""
        if isinstance(data, (torch.Tensor, np.ndarray)):
            n = data.shape[0]
            while True:
                perm = torch.randperm(n, generator=self._gen)
                for s in range(0, n, batch_size):
                    # Sorted indices keep reads sequential for memory-mapped arrays.
                    idx = perm[s : s + batch_size].sort().values
                    yield data[idx.numpy()] if isinstance(data, np.ndarray) else data[idx]
        while True:
            it = iter(data)
            one_shot = it is data
            empty = True
            for b in it:
                empty = False
                yield b
            if one_shot or empty:
                return

    def fit(self, data: ArrayLike | Iterable[ArrayLike], batch_size: int = 1024) -> "MiniBatchKMeans":
        """Run mini-batch steps until converged or ``max_iter`` steps.

        Args:
            data: an [n, D] tensor / numpy array (memory-mapped is fine), sampled in
                shuffled mini-batches of ``batch_size``; or an iterable of [b, D] batches
                used as given (re-iterated for more epochs if it is not a one-shot iterator).
            batch_size: mini-batch size for array input.

        Returns:
            self.
        """
        self.converged = False
        quiet = 0
        for steps, batch in enumerate(self._batches(data, batch_size), start=1):
            move = self.partial_fit(batch)
            # <= so that data with zero spread (all points equal) converges too.
            quiet = quiet + 1 if move <= self.tol * self._scale else 0
            if quiet >= self.PATIENCE:
                self.converged = True
                break
            if steps >= self.max_iter:
                break
        return self

    # -- use -------------------------------------------------------------------------

    def assign(self, x: ArrayLike) -> torch.Tensor:
        """Index of the nearest centroid for each row (ties → lowest index).

        Args:
            x: [n, D] points.

        Returns:
            [n] LongTensor of cluster ids.
        """
        if self.centroids is None:
            raise RuntimeError("assign() before fit(): no centroids")
        x = _as_float_tensor(x).to(self.centroids)
        return sq_dists(x, self.centroids).argmin(1)
