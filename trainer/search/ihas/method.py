"""iHAS as a search method: config, supernet, architecture loss and the derived decisions.

Decisions (plain JSON) = per cluster, the kept dims per field; plus the centroids and
the threshold searcher settings. The router (tables + gates + centroids) is built from
the trained supernet by `router()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from serving.features import FeatureSpec
from trainer.data.batches import iterate_batches
from trainer.models.ctr import MODELS, ModelConfig, build_model
from trainer.search.base import SearchLoopConfig
from trainer.search.ihas.gates import GateMode, InstanceGates, SharedGates
from trainer.search.ihas.kmeans import MiniBatchKMeans
from trainer.search.ihas.regularizer import ihas_regularizer
from trainer.search.ihas.supernet import GatedSupernet, Router
from trainer.search.ihas.threshold import HistogramThreshold

PHASE_MODES = {"pretrain": GateMode.OPEN, "search": GateMode.STOCHASTIC, "eval": GateMode.DETERMINISTIC}


@dataclass
class IHASConfig(SearchLoopConfig):
    """iHAS search settings (SPEC §4). Inherits the alternating schedule.

    Args:
        method: "ihas".
        clusters: K of the K-means stage (1 = iHAS-2: one retrained model).
        tau: Gumbel-softmax temperature of the stochastic gates.
        init_prob: keep-probability the gates start at when the search begins.
        l0: λ, weight of the expected-L0 term of R (per row, summed over gates).
        polarization: μ, weight of the polarization term (0 = iHAS-3).
        shared_gates: one probability vector for all rows instead of instance-wise gates (iHAS-4).
        threshold_bins: histogram bins of the deterministic threshold searcher.
        threshold_fallback: threshold of rows whose histogram has no valley.
        keep_ratio: a dim is kept for a cluster if its mean deterministic mask ≥ this (majority).
        kmeans_tol: K-means stops when centroids move less than this (relative to data spread).
        kmeans_max_iter: cap on K-means mini-batch steps.
        ablations: also run iHAS-2 (one model from the same search), iHAS-3 (a search
            without polarization) and iHAS-4 (a search with shared gates).
        transfer_models: other base model types retrained per cluster with the frozen
            gates' dims and router, each next to its own Base (the paper's transfer table).
        warm_variant: also report iHAS-warm: the same clusters and dims, each cluster model
            started from the supernet's weights instead of from scratch (mlp / wide_deep).
    """

    method: str = "ihas"
    clusters: int = 2
    tau: float = 0.1
    init_prob: float = 0.9
    l0: float = 1e-3
    polarization: float = 2e-3
    shared_gates: bool = False
    threshold_bins: int = 10
    threshold_fallback: float = 0.5
    keep_ratio: float = 0.5
    kmeans_tol: float = 1e-3
    kmeans_max_iter: int = 500
    ablations: bool = True
    transfer_models: list[str] = field(default_factory=list)
    warm_variant: bool = False

    def validate(self) -> list[str]:
        p = super().validate()
        if self.clusters < 1:
            p.append(f"search.clusters: must be >= 1, got {self.clusters}")
        if not self.tau > 0:
            p.append(f"search.tau: must be > 0, got {self.tau}")
        if not 0 < self.init_prob < 1:
            p.append(f"search.init_prob: must be in (0, 1), got {self.init_prob}")
        if self.l0 < 0 or self.polarization < 0:
            p.append("search.l0 / search.polarization: must be >= 0")
        if self.threshold_bins < 3:
            p.append(f"search.threshold_bins: must be >= 3, got {self.threshold_bins}")
        unknown = [m for m in self.transfer_models if m not in MODELS]
        if unknown:
            p.append(f"search.transfer_models: {unknown} not in {sorted(MODELS)}")
        if not 0 < self.keep_ratio <= 1:
            p.append(f"search.keep_ratio: must be in (0, 1], got {self.keep_ratio}")
        return p


class IHAS:
    """The iHAS search method (implements trainer.search.base.SearchMethod).

    Args:
        cfg: iHAS settings.
        spec: the dataset's fields.
        model_cfg: the base model; every field starts at model_cfg.embedding_dim.
    """

    def __init__(self, cfg: IHASConfig, spec: FeatureSpec, model_cfg: ModelConfig):
        self.cfg = cfg
        self.spec = spec
        self.model_cfg = model_cfg
        self.supernet: GatedSupernet | None = None
        self.phase = "pretrain"

    def build(self) -> GatedSupernet:
        d = self.model_cfg.embedding_dim
        base = build_model(self.spec, self.model_cfg, dims={n: d for n in self.spec.names})
        width = d * len(self.spec.names)
        threshold = HistogramThreshold(self.cfg.threshold_bins, self.cfg.threshold_fallback)
        gate_cls = SharedGates if self.cfg.shared_gates else InstanceGates
        self.supernet = GatedSupernet(base, gate_cls(width, self.cfg.tau, self.cfg.init_prob, threshold))
        return self.supernet

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.supernet.gates.parameters())

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.supernet.gates.mode = PHASE_MODES[phase]

    def init_architecture(self) -> None:
        self.supernet.gates.reset_parameters()

    def arch_loss(self, bce: torch.Tensor) -> torch.Tensor:
        return bce + ihas_regularizer(self.supernet.last_p, self.cfg.l0, self.cfg.polarization)

    @torch.no_grad()
    def masked_embeddings(self, ds, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deterministic (E ⊙ m, m, p) of every row of a split, in row order."""
        self.set_phase("eval")
        out = [], [], []
        for batch in iterate_batches(ds, split, batch_size, shuffle=False, seed=0, epoch=0):
            for acc, t in zip(out, self.supernet.masked_embedding(batch.sparse_features)):
                acc.append(t.numpy())
        return tuple(np.concatenate(a) for a in out)

    def derive(self, ds, batch_size: int, seed: int, log, clusters: int | None = None) -> tuple[dict, Router]:
        """Cluster the deterministic masked embeddings; per cluster, keep majority dims.

        Args:
            clusters: K, default the config's; 1 gives iHAS-2's single model from the same search.

        Returns:
            (decisions as plain JSON, router module).
        """
        k = clusters or self.cfg.clusters
        masked, masks, probs = self.masked_embeddings(ds, "train", batch_size)
        kmeans = MiniBatchKMeans(k, self.cfg.kmeans_max_iter, self.cfg.kmeans_tol, seed)
        kmeans.fit(masked, batch_size=batch_size)
        assign = kmeans.assign(masked).numpy()
        log(f"k-means: {kmeans.n_iter} steps, converged={kmeans.converged}, cluster sizes {np.bincount(assign, minlength=k).tolist()}")
        d = self.model_cfg.embedding_dim
        clusters = []
        for c in range(k):
            rows = assign == c
            mean_mask = masks[rows].mean(axis=0) if rows.any() else np.zeros(masks.shape[1])
            keep = (mean_mask >= self.cfg.keep_ratio).reshape(len(self.spec.names), d)
            clusters.append(
                {
                    "id": c,
                    "train_rows": int(rows.sum()),
                    "dims": {n: int(k.sum()) for n, k in zip(self.spec.names, keep)},
                    "kept": {n: np.flatnonzero(k).tolist() for n, k in zip(self.spec.names, keep)},
                    "mean_mask": mean_mask.round(4).tolist(),
                }
            )
        decisions = {
            "method": "ihas",
            "embedding_dim": d,
            "fields": self.spec.names,
            "clusters": clusters,
            "centroids": kmeans.centroids.tolist(),
            "kmeans": {"steps": kmeans.n_iter, "converged": kmeans.converged},
            "threshold": {"bins": self.cfg.threshold_bins, "fallback": self.cfg.threshold_fallback},
            "open_fraction": float(masks.mean()),
            "prob_histogram": np.histogram(probs, bins=20, range=(0, 1))[0].tolist(),
            "config": asdict(self.cfg),
        }
        return decisions, Router(self.supernet, kmeans.centroids)
