"""iHAS as a search method (trainer.search.interface.SearchMethod).

Decisions = per cluster, the kept columns of every field (dim = how many); the router's
centroids and threshold-searcher settings. The router module (search-stage tables +
deterministic gates + centroids) is built from the trained supernet by `router()`.
Report rows: iHAS-1 (the search-stage network), iHAS, the paper's ablations (iHAS-2 one
model from the same search, iHAS-3 a search without polarization, iHAS-4 a search with one
probability vector shared by all rows, clustered as iHAS), iHAS-4 one model (shared gates
and no clustering, an earlier reading of iHAS-4 kept for comparison), iHAS-warm and
iHAS-shared (labelled, not in the paper) and the transfer table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.data.batches import iterate_batches
from trainer.decisions import ClusterDecision, Decisions, FieldDecision, RouterDecision, uniform
from trainer.models.build import build_model
from trainer.models.ctr import MODELS, CTRModel
from trainer.search.ihas.plots import write_plots
from trainer.search.ihas.warm_start import WARM_MODELS, warm_start_state
from trainer.search.interface import SearchContext, Variant
from trainer.search.loop import SearchLoopConfig
from trainer.search.ihas.gates import FieldGates, GateMode, InstanceGates, MLPGates, SharedGates
from trainer.search.ihas.clustering import best_kmeans, field_scale, gate_diagnostics
from trainer.search.ihas.mixture import Mixture, MixtureRouter, best_mixture, collect_ids
from trainer.search.ihas.regularizer import ihas_regularizer
from trainer.search.ihas.saliency import SaliencyFeatures, SaliencyRouter, saliency_rows, saliency_tables, standardizer
from trainer.search.ihas.shared import SharedTablesModel, column_means, shared_warm_state
from trainer.search.ihas.supernet import GatedSupernet, Router, gate_features
from trainer.search.ihas.threshold import HistogramThreshold

GATES = ("instance", "field", "mlp")
CLUSTER_ON = ("masked", "mask", "prob", "logit", "saliency", "ids")
CLUSTER_SCALE = ("none", "field", "column")
SHARED_TRAIN = ("joint", "heads")
PHASE_MODES = {"pretrain": GateMode.OPEN, "search": GateMode.STOCHASTIC, "eval": GateMode.DETERMINISTIC}


@dataclass
class IHASConfig(SearchLoopConfig):
    """iHAS search settings (paper defaults unless a config says otherwise). Inherits the alternating schedule.

    Args:
        method: "ihas".
        clusters: K of the K-means stage (1 = iHAS-2: one retrained model).
        tau: Gumbel-softmax temperature of the stochastic gates.
        init_prob: keep-probability the gates start at when the search begins.
        l0: λ, weight of the expected-L0 term of R (per row, summed over gates).
        polarization: μ, weight of the polarization term (0 = iHAS-3).
        shared_gates: one probability vector for all rows instead of instance-wise gates (iHAS-4).
        gates: the instance-wise gate network: "instance" (the paper's: one FC layer, a
            gate per embedding dim), "field" (one gate per field per row) or "mlp" (a hidden
            layer of gate_hidden units); the last two are labelled variants.
        gate_hidden: hidden width of the "mlp" gates.
        cluster_on: what K-means clusters: "masked" (the paper's E ⊙ m), "mask" (m),
            "prob" (the gate probabilities p), "logit" (the gates' pre-sigmoid logits)
            or two labelled variants: "saliency" (per field, the mean saliency of the row's
            ids, trainer.search.ihas.saliency; always standardized per field) and "ids"
            (no K-means: a latent-class mixture over the row's ids, trainer.search.ihas.mixture);
            the router computes the same.
        cluster_scale: "none" (the paper's); "field": each field's block of columns scaled
            to unit total variance over the training rows, so no single field's spread
            decides the clusters; "column": every column to unit variance.
        kmeans_restarts: K-means runs with seeds seed, seed+1, ...; the lowest inertia wins
            (with cluster_on = "ids": EM runs, the highest likelihood wins).
        threshold_bins: histogram bins of the deterministic threshold searcher.
        threshold_fallback: threshold of rows whose histogram has no valley.
        keep_ratio: a dim is kept for a cluster if its mean deterministic mask ≥ this (majority).
        kmeans_tol: K-means stops when centroids move less than this (relative to data spread).
        kmeans_max_iter: cap on K-means mini-batch steps.
    """

    method: str = "ihas"
    clusters: int = 2
    tau: float = 0.1
    init_prob: float = 0.9
    l0: float = 1e-3
    polarization: float = 2e-3
    shared_gates: bool = False
    gates: str = "instance"
    gate_hidden: int = 32
    threshold_bins: int = 10
    threshold_fallback: float = 0.5
    keep_ratio: float = 0.5
    cluster_on: str = "masked"
    cluster_scale: str = "none"
    kmeans_restarts: int = 1
    kmeans_tol: float = 1e-3
    kmeans_max_iter: int = 500

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
        for key, allowed in (("gates", GATES), ("cluster_on", CLUSTER_ON), ("cluster_scale", CLUSTER_SCALE)):
            if getattr(self, key) not in allowed:
                p.append(f"search.{key}: must be one of {allowed}, got {getattr(self, key)!r}")
        if self.cluster_on in ("saliency", "ids") and self.cluster_scale != "none":
            p.append(f"search.cluster_scale: cluster_on = {self.cluster_on!r} scales its features itself; leave it at 'none'")
        if self.gate_hidden < 1 or self.kmeans_restarts < 1:
            p.append("search.gate_hidden / search.kmeans_restarts: must be >= 1")
        if not 0 < self.keep_ratio <= 1:
            p.append(f"search.keep_ratio: must be in (0, 1], got {self.keep_ratio}")
        return p


@dataclass
class IHASVariants:
    """Which rows an iHAS run reports besides Base, iHAS-1 and iHAS.

    Args:
        ablations: iHAS-2 (one model from the same search), iHAS-3 (a search without
            polarization), iHAS-4 (a search with shared gates, clustered as iHAS) and
            iHAS-4 one model (shared gates, one model).
        transfer_models: other base model types retrained per cluster with the frozen
            gates' dims and router, each next to its own Base (the paper's transfer table).
        base_warm: iHAS-base-warm: the same clusters and dims, each cluster model started from
            the trained Base model cut to the cluster's kept columns (mlp / wide_deep heads;
            Base stops early on clean validation data, the supernet's weights need not).
        warm: iHAS-warm: the same clusters and dims, each cluster model started from the
            supernet's weights instead of from scratch (mlp / wide_deep heads only).
        shared: iHAS-shared: the same router, clusters and kept columns, but the router and
            every cluster head read one set of tables (trainer.search.ihas.shared; mlp heads).
        shared_train: "joint" (tables and heads train together) or "heads" (the search's
            tables stay as they are; only the heads train).
        ids: iHAS-ids: the same search and gates, the rows clustered (and routed) by the
            latent-class mixture over their ids (`search.cluster_on = "ids"`) instead of
            K-means on E ⊙ m; each cluster keeps the dims its rows' masks keep. With `shared`
            also iHAS-ids-shared, and with `base_warm` too iHAS-ids-shared-base-warm (its one
            table set and heads start from the trained Base model instead of the supernet:
            the id router does not read the tables, so any start routes the same).
    """

    ablations: bool = True
    transfer_models: list[str] = field(default_factory=list)
    warm: bool = False
    base_warm: bool = False
    shared: bool = False
    shared_train: str = "joint"
    ids: bool = False

    def validate(self) -> list[str]:
        unknown = [m for m in self.transfer_models if m not in MODELS]
        p = [f"variants.transfer_models: {unknown} not in {sorted(MODELS)}"] if unknown else []
        if self.shared_train not in SHARED_TRAIN:
            p.append(f"variants.shared_train: must be one of {SHARED_TRAIN}, got {self.shared_train!r}")
        return p


class IHAS:
    """The iHAS search method.

    Args:
        cfg: iHAS settings.
        ctx: the run's context; every field starts at ctx.model.embedding_dim.
    """

    Config = IHASConfig
    Variants = IHASVariants

    def __init__(self, cfg: IHASConfig, ctx: SearchContext):
        self.cfg, self.spec, self.model_cfg, self.base, self.counts = cfg, ctx.spec, ctx.model, ctx.base, ctx.counts
        self.retrain_options: dict = {}
        self.ctx = ctx
        self.supernet: GatedSupernet | None = None
        self.phase = "pretrain"
        self.shared_train = "joint"
        self.saliency: SaliencyFeatures | None = None  # built by derive (or router, on resume) from the supernet
        self.mixtures: dict[int, tuple[Mixture, MixtureRouter]] = {}  # per K, fitted by derive (or router, on resume)

    @staticmethod
    def check_config(exp) -> list[str]:
        p = []
        for key in ("warm", "base_warm"):
            if getattr(exp.variants, key) and exp.model.name not in WARM_MODELS:
                p.append(f"variants.{key}: needs model.name in {list(WARM_MODELS)} (an MLP-only head), got {exp.model.name!r}")
        if exp.variants.shared and (exp.model.name != "mlp" or exp.search.clusters < 2):
            p.append(f"variants.shared: needs model.name = 'mlp' and search.clusters >= 2, got {exp.model.name!r} and "
                     f"{exp.search.clusters}")
        if exp.variants.shared and exp.search.cluster_on == "saliency":
            p.append("variants.shared: routes from the shared tables' kept columns; it cannot route on search.cluster_on = 'saliency'")
        if exp.model.dims:
            p.append("model.dims: iHAS searches from every field at model.embedding_dim; remove the per-field dims")
        return p

    def build(self) -> GatedSupernet:
        d = self.model_cfg.embedding_dim
        base = build_model(self.spec, self.model_cfg, dims={n: d for n in self.spec.names})
        width = d * len(self.spec.names)
        threshold = HistogramThreshold(self.cfg.threshold_bins, self.cfg.threshold_fallback)
        args = (width, self.cfg.tau, self.cfg.init_prob, threshold)
        if self.cfg.shared_gates:
            gates = SharedGates(*args)
        elif self.cfg.gates == "field":
            gates = FieldGates(*args, units=len(self.spec.names))
        elif self.cfg.gates == "mlp":
            gates = MLPGates(*args, units=self.cfg.gate_hidden)
        else:
            gates = InstanceGates(*args)
        self.supernet = GatedSupernet(base, gates)
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
    def gate_features(self, ds, split: str, batch_size: int, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Deterministic `gate_features` of every row of a split, in row order."""
        self.set_phase("eval")
        out: dict[str, list] = {}
        for batch in iterate_batches(ds, split, batch_size, shuffle=False, seed=0, epoch=0):
            for k, t in gate_features(self.supernet.base.embeddings, self.supernet.gates, batch.sparse_features, kinds).items():
                out.setdefault(k, []).append(t.numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    def next_stage(self, loop: SearchLoopConfig) -> None:
        return None  # one search stage

    def derive(self, ctx: SearchContext, clusters: int | None = None, cluster_on: str | None = None) -> Decisions:
        """Cluster the deterministic masked embeddings; per cluster, keep majority dims.

        Args:
            clusters: K, default the config's; 1 gives iHAS-2's single model from the same search.
            cluster_on: what to cluster, default the config's (CLUSTER_ON).
        """
        k = clusters or self.cfg.clusters
        on = cluster_on or self.cfg.cluster_on
        kinds = ("mask", "prob") if on in ("saliency", "ids") else tuple({"mask", "prob", on})
        feats = self.gate_features(ctx.ds, "train", ctx.train.eval_batch_size, kinds)
        masks, probs = feats["mask"], feats["prob"]
        d = self.model_cfg.embedding_dim
        scale, shift = None, None
        if on == "ids" and k > 1:
            fit, mixture = self.mixture(ctx, k)
            with torch.no_grad():  # the router's own float32 lookup, so retraining splits the rows as it does
                assign = np.concatenate([mixture(b.dense_features, b.sparse_features).numpy() for b in
                                         iterate_batches(ctx.ds, "train", ctx.train.eval_batch_size, shuffle=False, seed=0, epoch=0)])
            centroids = fit.log_prior.reshape(k, 1)
            clustering = {"em_steps": fit.steps, "loglik": fit.loglik}
            ctx.log(f"id mixture ({self.cfg.kmeans_restarts} EM runs, log-likelihood {fit.loglik:.6g}): "
                    f"{fit.steps} steps, cluster sizes {np.bincount(assign, minlength=k).tolist()}")
        else:
            if on == "saliency":
                x = saliency_rows(self.saliency_features(ctx), ctx.ds, "train", ctx.train.eval_batch_size)
                shift, scale = standardizer(x)
            else:
                x = feats[on] if on != "ids" else masks  # ids with K = 1: one cluster, whatever is clustered
                if self.cfg.cluster_scale != "none":
                    scale = field_scale(x, len(self.spec.names) if self.cfg.cluster_scale == "field" else x.shape[1])
            scaled = x if scale is None else (x if shift is None else x - shift) * scale
            c = self.cfg
            kmeans, inertia = best_kmeans(scaled, k, c.kmeans_restarts, c.kmeans_max_iter, c.kmeans_tol, ctx.train.seed,
                                          ctx.train.eval_batch_size)
            assign = kmeans.assign(scaled).numpy()
            # The router scales the raw features only: a shift moves into the centroids,
            # since |(x − μ)s − c| = |xs − (c + μs)|.
            centroids = kmeans.centroids.numpy() + (0.0 if shift is None else shift * scale)
            clustering = {"steps": kmeans.n_iter, "converged": kmeans.converged, "inertia": inertia}
            ctx.log(f"k-means ({self.cfg.kmeans_restarts} runs, inertia {inertia:.4g}): {kmeans.n_iter} steps, "
                    f"converged={kmeans.converged}, cluster sizes {np.bincount(assign, minlength=k).tolist()}")
        found, mean_masks = [], []
        for c in range(k):
            rows = assign == c
            mean_mask = masks[rows].mean(axis=0) if rows.any() else np.zeros(masks.shape[1])
            keep = (mean_mask >= self.cfg.keep_ratio).reshape(len(self.spec.names), d)
            fields = {n: FieldDecision(int(kk.sum()), tuple(np.flatnonzero(kk).tolist())) for n, kk in zip(self.spec.names, keep)}
            found.append(ClusterDecision(c, fields, int(rows.sum())))
            mean_masks.append(mean_mask.round(4).tolist())
            ctx.log(f"cluster {c}: {int(rows.sum())} train rows, dims {found[-1].dims}")
        router = None
        if k > 1:
            router = RouterDecision(np.asarray(centroids).tolist(), self.cfg.threshold_bins, self.cfg.threshold_fallback,
                                    on, None if scale is None else scale.tolist())
        groups = None if ctx.ds is None or ctx.ds.groups is None else np.asarray(ctx.ds.groups[ctx.ds.indices("train")])
        details = {"embedding_dim": d, "kmeans" if "inertia" in clustering else "id_mixture": clustering,
                   "open_fraction": float(masks.mean()), "prob_histogram": np.histogram(probs, bins=20, range=(0, 1))[0].tolist(),
                   "mean_mask": mean_masks, "gates": gate_diagnostics(masks, self.spec.names, assign, groups)}
        return Decisions("ihas", tuple(found), router=router, details=details)

    def saliency_features(self, ctx: SearchContext) -> SaliencyFeatures:
        """The per-id saliency tables of the trained supernet (computed once per run)."""
        if self.saliency is None:
            self.set_phase("eval")
            ctx.log("saliency: one gradient pass over the training rows for the per-id tables")
            self.saliency = SaliencyFeatures(self.spec, saliency_tables(self.supernet, self.spec, ctx.ds,
                                                                        ctx.train.eval_batch_size))
        return self.saliency

    def mixture(self, ctx: SearchContext, k: int) -> tuple[Mixture, MixtureRouter]:
        """The id mixture with k clusters fitted on the training rows, and its router (once per run and k)."""
        if k not in self.mixtures:
            fields, n = collect_ids(ctx.ds, self.spec, ctx.train.eval_batch_size)
            seeds = range(ctx.train.seed, ctx.train.seed + self.cfg.kmeans_restarts)
            fit = best_mixture(fields, n, k, seeds)
            self.mixtures[k] = fit, MixtureRouter(self.spec, fit.log_theta, torch.from_numpy(fit.log_prior))
        return self.mixtures[k]

    def router(self, decisions: Decisions) -> nn.Module | None:
        if decisions.router is None:
            return None
        r = decisions.router
        scale = None if r.scale is None else torch.tensor(r.scale, dtype=torch.float32)
        centroids = torch.tensor(r.centroids, dtype=torch.float32)
        if r.features == "saliency":
            return SaliencyRouter(self.saliency_features(self.ctx), centroids, scale)
        if r.features == "ids":
            return self.mixture(self.ctx, len(r.centroids))[1]
        return Router(self.supernet, centroids, r.features, scale)

    def variants(self, ctx: SearchContext, decisions: Decisions, wanted: IHASVariants) -> list[Variant]:
        rows = [Variant("ihas_1", "iHAS-1 (search-stage model)", "supernet")]
        if wanted.ablations:
            one = self.derive(ctx, clusters=1).replace(method="ihas_2")
            rows += [Variant("ihas_2", "iHAS-2 (one model, same search)", "ablation", (one,)),
                     Variant("ihas_3", "iHAS-3 (no polarization)", "ablation", search={"polarization": 0.0}),
                     Variant("ihas_4", "iHAS-4 (shared gates)", "ablation", search={"shared_gates": True}),
                     Variant("ihas_4_one_model", "iHAS-4, one model (not the paper's)", "ablation",
                             search={"shared_gates": True, "clusters": 1})]
        rows.append(Variant("ihas", "iHAS", "method", (decisions,)))
        if wanted.warm:
            rows.append(Variant("ihas_warm", "iHAS-warm (not in the paper)", "variant", (decisions,), init="method"))
        if wanted.base_warm:
            rows.append(Variant("ihas_base_warm", "iHAS-base-warm (not in the paper)", "variant", (decisions,), init="method"))
        if wanted.ids and self.cfg.cluster_on != "ids" and self.cfg.clusters > 1:
            by_ids = self.derive(ctx, cluster_on="ids").replace(method="ihas_ids")
            rows.append(Variant("ihas_ids", "iHAS-ids (rows clustered by their ids, not in the paper)", "variant", (by_ids,)))
            if wanted.shared:
                own = tuple(replace(c, served_by="self") for c in by_ids.clusters)
                rows.append(Variant("ihas_ids_shared", "iHAS-ids-shared (one table set, not in the paper)", "variant",
                                    (by_ids.replace(method="ihas_ids_shared", clusters=own, shared_tables=True),),
                                    init="method"))
                if wanted.base_warm:
                    rows.append(Variant("ihas_ids_shared_base_warm",
                                        "iHAS-ids-shared-base-warm (one table set started from Base, not in the paper)",
                                        "variant", (by_ids.replace(method="ihas_ids_shared_base_warm", clusters=own,
                                                                   shared_tables=True),), init="method"))
        self.shared_train = wanted.shared_train
        if wanted.shared:
            own = tuple(replace(c, served_by="self") for c in decisions.clusters)  # the guard's record is not this row's
            rows.append(Variant("ihas_shared", "iHAS-shared (one table set, not in the paper)", "variant",
                                (decisions.replace(method="ihas_shared", clusters=own, shared_tables=True),), init="method"))
        base = uniform("base", ctx.spec.names, {n: self.model_cfg.embedding_dim for n in ctx.spec.names}, ctx.train_rows)
        for m in wanted.transfer_models:
            rows += [Variant(f"transfer_{m}_base", f"transfer: Base ({m})", "transfer", (base,), model=m),
                     Variant(f"transfer_{m}", f"transfer: iHAS ({m})", "transfer", (decisions,), model=m)]
        return rows

    def build_shared(self, decisions: Decisions):
        """(device=None) → an untrained SharedTablesModel for `decisions` (shared_tables)."""
        joint = self.shared_train == "joint"
        fill = column_means(self.supernet.base, self.counts)
        # a resumed run refits the mixture (seeded: the same one)
        mixture = self.mixture(self.ctx, len(decisions.clusters))[0] if decisions.router.features == "ids" else None
        return lambda device=None: SharedTablesModel(self.spec, self.model_cfg, decisions, self.supernet.gates, device, joint,
                                                     fill, mixture)

    def init_retrain(self, variant: Variant, cluster: ClusterDecision, model: CTRModel) -> None:
        source = self.base if variant.name.endswith("base_warm") else self.supernet.base
        if isinstance(model, SharedTablesModel):
            model.load_state_dict(shared_warm_state(source, model))
            return
        model.load_state_dict(warm_start_state(source, model, cluster.kept))

    def report(self, ctx: SearchContext, searched: dict[str, Decisions], out: Path | None) -> dict:
        main = searched["ihas"]
        entry = {"open_fraction": main.details["open_fraction"]}
        if out is not None:
            labels = {"ihas": "iHAS", "ihas_3": "iHAS-3 (no polarization)"}
            hist = {labels[k]: d.details["prob_histogram"] for k, d in searched.items() if k in labels}
            entry["plots"] = write_plots(main, self.model_cfg.embedding_dim, hist, out)
        return entry
