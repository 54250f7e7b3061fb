"""Config + decisions → a CTR model: the one place that picks an embeddings implementation.

Plain mixed-dim tables when every field stores all its ids, the DPQ training form when a
cluster's decisions compress some field; the head never knows which. Models get their
embeddings at construction (nothing swaps `model.embeddings` afterwards except the
export conversion `served_form`).
"""

from __future__ import annotations

from torch import nn

from serving.features import FeatureSpec
from trainer.decisions import AutoDisSettings, ClusterDecision, FieldDecision, Interaction
from trainer.models.aim import AIMModel
from trainer.models.autodis import NumericalEmbeddings
from trainer.models.ctr import MODELS, CTRModel, ModelConfig
from trainer.models.dpq import TAU_KD, CompressedEmbeddings, require_separate_first_order, served_model
from trainer.models.layout import EmbeddingLayout, from_cluster, layout_for
from trainer.models.tables import FieldEmbeddings


def embeddings_for(spec: FeatureSpec, cfg: ModelConfig, layout: EmbeddingLayout, device=None, tau_kd: float = TAU_KD) -> nn.Module:
    """The embeddings module that stores `layout` (see the module docstring)."""
    if all(t.kind == "full" for t in layout.tables):
        dims = dict(zip(layout.fields, layout.dims))
        in_column = MODELS[cfg.name].uses_linear and cfg.first_order_column
        return FieldEmbeddings(spec, dims, cfg.init_scale, device, first_order_column=in_column)
    require_separate_first_order(cfg)
    return CompressedEmbeddings(layout, cfg.init_scale, tau_kd, device, sparse=cfg.raw_rows == "sparse")


def build_model(spec: FeatureSpec, cfg: ModelConfig, dims: dict[str, int] | None = None, device=None, *,
                cluster: ClusterDecision | None = None, layout: EmbeddingLayout | None = None,
                embeddings: nn.Module | None = None, tau_kd: float = TAU_KD,
                interactions: tuple[Interaction, ...] | None = None, interaction_model: str = "base",
                function_wise: bool = False, numerical: dict[str, str] | None = None,
                autodis: AutoDisSettings | None = None) -> nn.Module:
    """The configured model over one of: a cluster's decisions, a layout, plain `dims`
    (default: the config's), or a ready embeddings module (a search supernet's).
    `interactions`: the kept interactions (None = every pair of the model's interaction);
    `interaction_model` "aim" builds trainer.models.aim.AIMModel over them instead (each
    with its function, `function_wise` embeddings, a cluster's kept dims at their positions).
    `numerical`: field → "autodis" / "scalar" for numerical fields embedded from their
    value (at the field's decided dim, with `autodis` settings) instead of a table."""
    embedded = {n: k for n, k in (numerical or {}).items() if k != "bucketized"}
    if interaction_model == "aim":
        if embeddings is not None or layout is not None or cluster is None or embedded:
            raise ValueError("AIM's interaction model is built from a cluster's decisions, numerical fields bucketized")
        terms = [(tuple(i.fields), i.function) for i in interactions or ()]
        positions = {n: f.kept for n, f in cluster.fields.items() if f.kept is not None}
        return AIMModel(spec, cfg, terms, cluster.dims, positions, function_wise, device)
    module = None
    if embedded:
        if cluster is None:
            raise ValueError("numerical fields embedded from their value need a cluster's decisions")
        field_dims = sorted({cluster.fields[n].dim for n in embedded})
        if len(field_dims) != 1 or field_dims[0] < 1:
            raise ValueError(f"fields embedded from their value need one common dim > 0, got {field_dims}")
        module = NumericalEmbeddings(spec, embedded, field_dims[0], autodis, cfg.init_scale)
        # their tables are dropped: the value, not a bucket row, embeds them
        cluster = ClusterDecision(cluster.id, {n: FieldDecision(0) if n in embedded else f for n, f in cluster.fields.items()},
                                  cluster.train_rows, cluster.served_by)
    if embeddings is None:
        if cluster is not None:
            layout = from_cluster(spec, cluster)
        elif layout is None:
            layout = layout_for(spec, dims if dims is not None else cfg.field_dims(spec))
        embeddings = embeddings_for(spec, cfg, layout, device, tau_kd)
    kept = None if interactions is None else [tuple(i.fields) for i in interactions]
    model = MODELS[cfg.name](spec, cfg, embeddings, device, kept, module)
    weights = {frozenset(i.fields): i.weight for i in interactions or () if i.weight is not None}
    if weights:
        model.weight_pairs(weights)
    return model


def served_form(model: CTRModel) -> CTRModel:
    """What the bundle stores for a trained model: DPQ fields as codes + centroids, else the model."""
    if isinstance(model.embeddings, CompressedEmbeddings):
        return served_model(model)
    return model.eval()

