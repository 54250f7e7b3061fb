"""Warm start for iHAS cluster models: the searched supernet's weights cut to a cluster's dims.

A cluster keeps, per field f, the embedding columns `kept[f]` of the supernet's d-wide
table. Its model gets those columns of each table and the matching input columns of the
first MLP layer; every other parameter is copied. At initialisation it therefore scores a
row exactly as the supernet's base network does under that cluster's fixed mask, so
fine-tuning on the cluster's rows starts from what the search learnt on all rows. The
paper retrains cluster models from scratch; the job reports this as the iHAS-warm variant
next to it.

Only heads that read the embeddings through the MLP's first layer (mlp, wide_deep) map
exactly: an inner-product interaction (FM, IPNN, DLRM) would pair different original
columns once each field's kept columns are packed to the front.
"""

from __future__ import annotations

import torch

from trainer.models.ctr import CTRModel, MLPModel

FIRST_LAYER = "deep.0.weight"
WARM_MODELS = ("mlp", "wide_deep")  # trainer.models.ctr names whose head is MLPModel.head
TABLE = "embeddings.ebc.embedding_bags.t_"


def supports_warm_start(model: CTRModel) -> bool:
    return isinstance(model, MLPModel) and type(model).head is MLPModel.head


@torch.no_grad()
def warm_start_state(base: CTRModel, target: CTRModel, kept: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """`target`'s full state dict, filled from `base` (the supernet's network, every field at d).

    Args:
        base: the searched supernet's base network (plain, unsharded).
        target: a fresh cluster model of the same type, at the cluster's dims.
        kept: field → the base-table columns the cluster keeps (len = the field's dim).
    """
    if type(base) is not type(target) or not supports_warm_start(target):
        raise ValueError(f"warm start maps {type(base).__name__} → {type(target).__name__}; it needs the same "
                         f"model type on both sides and an MLP-only head (mlp, wide_deep)")
    b_lay, t_lay = base.embeddings.layout, target.embeddings.layout
    wrong = {f: (len(kept.get(f, [])), d) for f, d in zip(t_lay.fields, t_lay.dims) if len(kept.get(f, [])) != d}
    if wrong:
        raise ValueError(f"kept columns do not match the target's dims (kept, dim): {wrong}")
    start = dict(zip(b_lay.fields, torch.tensor((0,) + b_lay.dims[:-1]).cumsum(0).tolist()))
    cols = [start[f] + j for f in t_lay.fields for j in kept[f]]
    cols += [base.concat_dim + j for j in range(target.n_dense)]  # dense inputs follow the embeddings
    source = base.state_dict()
    b_fo, t_fo = base.embeddings.first_order, target.embeddings.first_order
    state = {}
    for key, value in target.state_dict().items():
        if key.startswith(TABLE):
            f = key[len(TABLE):].rsplit(".", 1)[0]
            w = torch.zeros_like(value)
            w[:, : len(kept.get(f, []))] = source[key][:, kept.get(f, [])]
            if t_fo:
                w[:, t_fo[f]] = source[key][:, b_fo[f]]
            state[key] = w
        elif key == FIRST_LAYER:
            state[key] = source[key][:, cols].clone()
        elif key in source and source[key].shape == value.shape:
            state[key] = source[key].clone()
        else:
            raise ValueError(f"warm start cannot map parameter {key!r} {tuple(value.shape)}")
    return state
