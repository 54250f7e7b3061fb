"""Clustering rows by a latent-class mixture over their ids (labelled variant,
`search.cluster_on = "ids"`; not in the paper).

Why: on data with planted sub-populations the trained gates come out nearly the same for
every row, and the supernet's embeddings keep only part of what tells the groups apart
(measured in docs/results.md), while the rows' ids together say it almost exactly. This
variant clusters on the ids themselves; the gates still choose each cluster's dims.

Model: a row's cluster g is drawn from π; given g, each field's id is drawn independently
from θ_{g,f} (the ids of a bag each count 1/len, so a bag weighs as one observation).
EM from seeded random responsibilities:
    E-step  r_ig ∝ π_g · Π_f θ_{g,f}(id_if)
    M-step  π_g = mean_i r_ig,  θ_{g,f}(v) = (Σ_i r_ig [id_if = v] + α) / (Σ_i r_ig + α V_f)
Laplace smoothing α keeps an id a cluster never saw at a small, finite probability. Several
seeded restarts; the highest log-likelihood wins. The router keeps log θ (K floats per id,
in TorchRec tables) and log π and sends a row to argmax_g log π_g + Σ_f log θ_{g,f}(id_f),
the E-step's most likely cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from serving.features import FeatureSpec
from trainer.search.ihas.fused import cluster_program, fusable
from trainer.search.ihas.idtables import IdTables, split_ids

SMOOTHING = 1.0
MAX_ITER = 200
TOL = 1e-4  # largest change of any responsibility between two iterations


@dataclass
class FieldIds:
    """One field's ids over the rows: entry j is id `ids[j]` of row `rows[j]`, weighing `weights[j]`."""

    rows: np.ndarray
    ids: np.ndarray
    weights: np.ndarray
    vocab: int


@dataclass
class Mixture:
    """A fitted mixture: log π [K], per field log θ [V_f, K], its log-likelihood and EM steps."""

    log_prior: np.ndarray
    log_theta: list[np.ndarray]
    loglik: float
    steps: int


def collect_ids(ds, spec: FeatureSpec, batch_size: int) -> tuple[list[FieldIds], int]:
    """Every training row's ids per field, and the number of rows."""
    parts: list[list[tuple]] = [[] for _ in spec.fields]
    n = 0
    for batch, fields in split_ids(ds, "train", batch_size, spec.names):
        for i, (ids, lengths) in enumerate(fields):
            rows = np.repeat(np.arange(n, n + len(lengths)), lengths)
            weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths)
            parts[i].append((rows, ids, weights))
        n += batch.dense_features.shape[0]
    return [FieldIds(*(np.concatenate([p[j] for p in ps]) for j in range(3)), f.num_embeddings)
            for f, ps in zip(spec.fields, parts)], n


def _row_loglik(fields: list[FieldIds], log_theta: list[np.ndarray], log_prior: np.ndarray, n: int) -> np.ndarray:
    ll = np.tile(log_prior, (n, 1))
    for f, lt in zip(fields, log_theta):
        for g in range(len(log_prior)):
            ll[:, g] += np.bincount(f.rows, weights=f.weights * lt[f.ids, g], minlength=n)
    return ll


def _m_step(fields: list[FieldIds], resp: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    mass = resp.sum(axis=0)
    log_prior = np.log(np.maximum(mass / len(resp), 1e-300))
    log_theta = []
    for f in fields:
        counts = np.stack([np.bincount(f.ids, weights=f.weights * resp[f.rows, g], minlength=f.vocab)
                           for g in range(resp.shape[1])], axis=1)
        log_theta.append(np.log(counts + SMOOTHING) - np.log(mass + SMOOTHING * f.vocab))
    return log_prior, log_theta


def fit_mixture(fields: list[FieldIds], n: int, k: int, seed: int) -> Mixture:
    """EM from seeded random responsibilities until no responsibility moves more than TOL."""
    resp = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    for step in range(1, MAX_ITER + 1):
        log_prior, log_theta = _m_step(fields, resp)
        ll = _row_loglik(fields, log_theta, log_prior, n)
        top = ll.max(axis=1, keepdims=True)
        p = np.exp(ll - top)
        total = p.sum(axis=1, keepdims=True)
        new = p / total
        moved = float(np.abs(new - resp).max())
        resp = new
        if moved < TOL:
            break
    log_prior, log_theta = _m_step(fields, resp)
    loglik = float(np.logaddexp.reduce(_row_loglik(fields, log_theta, log_prior, n), axis=1).sum())
    return Mixture(log_prior, log_theta, loglik, step)


def best_mixture(fields: list[FieldIds], n: int, k: int, seeds: range) -> Mixture:
    """The highest-likelihood fit over seeded restarts."""
    return max((fit_mixture(fields, n, k, s) for s in seeds), key=lambda m: m.loglik)


class MixtureRouter(nn.Module):
    """Row → the mixture's most likely cluster.

    Args:
        spec: the dataset's fields.
        log_theta: per field [V_f, K].
        log_prior: [K].
    """

    def __init__(self, spec: FeatureSpec, log_theta: list[np.ndarray], log_prior: torch.Tensor):
        super().__init__()
        self.tables = IdTables(spec, log_theta, prefix="m_")
        self.register_buffer("log_prior", log_prior.detach().clone().float())

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return (self.tables(sparse).sum(dim=1) + self.log_prior).argmax(dim=1)

    def fuse(self, models: list[nn.Module]) -> nn.Module | None:
        """One program that routes like this router and scores with `models` (cluster id =
        index), or None when the models are not plain MLPs (trainer.search.ihas.fused)."""
        return cluster_program(models, self) if fusable(models) else None
