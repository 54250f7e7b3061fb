"""Predictor: validated rows → router → each cluster's model on its rows → merged scores.

Transport-free (no grpc): the gRPC servicer, the offline reference in tests and any batch
scorer use the same object, so a served score is the offline score by construction.
Thread-safe: exported programs are pure functions of their inputs, so concurrent requests
may run one Predictor at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from serving.batch import FeatureBatch
from serving.bundle import GOLDEN_ATOL, Bundle, BundleError, read_golden
from serving.encode import Column, Encoder, Limits


class RoutingError(RuntimeError):
    """The bundle's router returned something unusable (a bundle bug, not bad input)."""


@dataclass(frozen=True)
class Prediction:
    """Scores of one batch, index i = input row i.

    Args:
        probabilities: float32 [B] click probabilities (sigmoid of the cluster model's logit).
        clusters: int64 [B] the cluster whose model scored each row.
        version: bundle version that produced them.
    """

    probabilities: np.ndarray
    clusters: np.ndarray
    version: str


class Predictor:
    """Scores request rows with one loaded bundle.

    Args:
        bundle: a loaded, verified bundle.
        limits: request size limits (rows per request, values per bag).
    """

    def __init__(self, bundle: Bundle, limits: Limits = Limits()):
        self.bundle = bundle
        self.encoder = Encoder(bundle.spec, limits)
        self._keys = bundle.spec.names

    @property
    def version(self) -> str:
        return self.bundle.version

    def predict_rows(self, rows: Sequence[Mapping[str, Any]], *, tagged: bool = False) -> Prediction:
        """Scores rows (see `Encoder.encode_rows`). Raises InvalidRequest on bad input."""
        return self.predict(self.encoder.encode_rows(rows, tagged=tagged))

    def predict_columns(self, num_rows: int, columns: Mapping[str, Column]) -> Prediction:
        """Scores a columnar batch (see `Encoder.encode_columns`). Raises InvalidRequest."""
        return self.predict(self.encoder.encode_columns(num_rows, columns))

    def predict(self, batch: FeatureBatch) -> Prediction:
        """Scores an encoded batch: route, score each cluster's rows, merge in order."""
        n = batch.num_rows
        if self.bundle.routed is not None:
            return self._predict_routed(batch)
        with torch.inference_mode():
            clusters = self._route(batch)
            logits = np.empty(n, dtype=np.float32)
            present = np.unique(clusters)
            for c in present.tolist():
                # a single cluster (always, without a router) skips the gather
                rows = np.flatnonzero(clusters == c) if len(present) > 1 else None
                part = batch if rows is None else batch.take(rows)
                out = self.bundle.models[c](*part.to_inputs(self._keys))
                if rows is None:
                    logits[:] = out.numpy()
                else:
                    logits[rows] = out.numpy()
            probabilities = torch.sigmoid(torch.from_numpy(logits)).numpy()
        return Prediction(probabilities, clusters, self.version)

    def _predict_routed(self, batch: FeatureBatch) -> Prediction:
        """One call of the routed program: the clusters share one table set, so every row's
        embeddings are looked up once and scored by its cluster's head, in order."""
        with torch.inference_mode():
            logits, clusters = self.bundle.routed(*batch.to_inputs(self._keys))
            clusters = self._checked(clusters.numpy().astype(np.int64, copy=False), batch.num_rows)
            chosen = logits.gather(1, torch.from_numpy(clusters)[:, None]).squeeze(1)
            probabilities = torch.sigmoid(chosen).numpy()
        return Prediction(probabilities, clusters, self.version)

    def warm_up(self) -> None:
        """Scores the bundle's golden rows through the whole request path (route, split,
        score, merge) and requires the exporter's outputs; raises BundleError otherwise.
        A hot reload runs this before the new predictor takes traffic."""
        golden = read_golden(self.bundle)
        try:
            pred = self.predict(golden.batch)
        except Exception as e:  # a program that fails here would fail every request
            raise BundleError(f"{self.bundle.path}: warm-up request failed: {type(e).__name__}: {e}") from e
        want = 1.0 / (1.0 + np.exp(-golden.logits[golden.clusters, np.arange(len(golden.clusters))].astype(np.float64)))
        if not np.array_equal(pred.clusters, golden.clusters):
            raise BundleError(f"{self.bundle.path}: warm-up routed the golden rows differently from the exporter")
        diff = float(np.max(np.abs(pred.probabilities - want))) if len(want) else 0.0
        if not diff <= GOLDEN_ATOL:
            raise BundleError(f"{self.bundle.path}: warm-up probabilities differ from the exporter's by {diff:.3g}")

    def _route(self, batch: FeatureBatch) -> np.ndarray:
        out = self.bundle.router(*batch.to_inputs(self._keys))
        return self._checked(out.numpy().astype(np.int64, copy=False), batch.num_rows)

    def _checked(self, clusters: np.ndarray, n: int) -> np.ndarray:
        k = self.bundle.num_clusters
        if clusters.shape != (n,) or (len(clusters) and (clusters.min() < 0 or clusters.max() >= k)):
            raise RoutingError(f"router of bundle {self.version} returned {clusters.shape} ids outside [0, {k})")
        return clusters
