"""Config + decisions → a CTR model: the one place that picks an embeddings implementation.

Plain mixed-dim tables when every field stores all its ids, the DPQ training form when a
cluster's decisions compress some field; the head never knows which. Models get their
embeddings at construction (nothing swaps `model.embeddings` afterwards except the
export conversion `served_form`).
"""

from __future__ import annotations

from torch import nn

from serving.features import FeatureSpec
from trainer.decisions import ClusterDecision, Interaction
from trainer.models.aim import AIMModel
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
    return CompressedEmbeddings(layout, cfg.init_scale, tau_kd, device)


def build_model(spec: FeatureSpec, cfg: ModelConfig, dims: dict[str, int] | None = None, device=None, *,
                cluster: ClusterDecision | None = None, layout: EmbeddingLayout | None = None,
                embeddings: nn.Module | None = None, tau_kd: float = TAU_KD,
                interactions: tuple[Interaction, ...] | None = None, interaction_model: str = "base",
                function_wise: bool = False) -> nn.Module:
    """The configured model over one of: a cluster's decisions, a layout, plain `dims`
    (default: the config's), or a ready embeddings module (a search supernet's).
    `interactions`: the kept interactions (None = every pair of the model's interaction);
    `interaction_model` "aim" builds trainer.models.aim.AIMModel over them instead (each
    with its function, `function_wise` embeddings, a cluster's kept dims at their positions)."""
    if interaction_model == "aim":
        if embeddings is not None or layout is not None or cluster is None:
            raise ValueError("AIM's interaction model is built from a cluster's decisions")
        terms = [(tuple(i.fields), i.function) for i in interactions or ()]
        positions = {n: f.kept for n, f in cluster.fields.items() if f.kept is not None}
        return AIMModel(spec, cfg, terms, cluster.dims, positions, function_wise, device)
    if embeddings is None:
        if cluster is not None:
            layout = from_cluster(spec, cluster)
        elif layout is None:
            layout = layout_for(spec, dims if dims is not None else cfg.field_dims(spec))
        embeddings = embeddings_for(spec, cfg, layout, device, tau_kd)
    kept = None if interactions is None else [tuple(i.fields) for i in interactions]
    return MODELS[cfg.name](spec, cfg, embeddings, device, kept)


def served_form(model: CTRModel) -> CTRModel:
    """What the bundle stores for a trained model: DPQ fields as codes + centroids, else the model."""
    if isinstance(model.embeddings, CompressedEmbeddings):
        return served_model(model)
    return model.eval()

