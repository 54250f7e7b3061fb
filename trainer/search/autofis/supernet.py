"""The FIS supernet: a base model whose pairwise interactions each pass a gate α.

    logit = bias + ⟨w, x⟩ + Σ_{(i,j)} α_(i,j) · BN(⟨e_i, e_j⟩)          (FM)
          + MLP(e)                                                    (DeepFM)
    IPNN: MLP([e, α ⊙ BN(⟨e_i, e_j⟩)])

One batch norm per interaction, without scale and shift: a learned scale would let
⟨e_i, e_j⟩ and α trade magnitude, and α would stop measuring the interaction's
importance. α = 0 (GRDA makes exact zeros) closes the interaction.

`centred` (a labelled variant, not the paper's): the products are taken between embeddings
centred on their field's mean, ⟨e_i − ē_i, e_j − ē_j⟩ (batch mean while training, a running
mean in eval, as batch norm does). Then E[term | id of field i] = ⟨e_i − ē_i, E e_j − ē_j⟩ = 0:
a pair term cannot carry either field's main effect, so a field with an additive signal
gives no α to the pairs it sits in; only a signal in the pair itself does.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.blocks import centre_fields, pairwise_inner, stack_zero_padded
from trainer.models.ctr import FM, IPNN, CTRModel, DeepFM

FIS_MODELS = {"fm": FM, "deepfm": DeepFM, "ipnn": IPNN}


class FISNetwork(nn.Module):
    """A base model (FM / DeepFM / IPNN with every pair) with gated, normalised interactions.

    Args:
        base: the base model; its embeddings, first-order weights, bias and MLP are reused.
        pairs: [2, P] field-index pairs searched (every i < j at second order).
        alpha_init: the gates' starting value.
    """

    def __init__(self, base: CTRModel, pairs: torch.Tensor, alpha_init: float, centred: bool = False):
        super().__init__()
        if type(base) not in FIS_MODELS.values():
            raise ValueError(f"FIS searches the interactions of {sorted(FIS_MODELS)}, not {type(base).__name__}")
        self.base = base
        self.register_buffer("pairs", pairs)
        self.alpha = nn.Parameter(torch.full((pairs.shape[1],), float(alpha_init)))
        self.bn = nn.BatchNorm1d(pairs.shape[1], affine=False)
        self.centred = centred
        self.register_buffer("field_mean", torch.zeros(base.n_fields, base.max_dim) if centred else None)

    def interactions(self, embs: list[torch.Tensor]) -> torch.Tensor:
        """α ⊙ BN(⟨e_i, e_j⟩) per searched pair, [B, P]."""
        stacked = stack_zero_padded(embs, self.base.max_dim)
        if self.centred:
            stacked = centre_fields(stacked, self.field_mean, self.bn.momentum, self.training)
        return self.bn(pairwise_inner(stacked, self.pairs)) * self.alpha

    def forward(self, dense: torch.Tensor, sparse) -> torch.Tensor:
        base = self.base
        embs, first_order = base.embeddings.lookup(sparse)
        gated = self.interactions(embs)
        if isinstance(base, IPNN):
            logit = base.deep(torch.cat([base.deep_input(dense, embs), gated], dim=1)).squeeze(1)
        else:
            logit = gated.sum(dim=1)
            if isinstance(base, DeepFM):
                logit = logit + base.deep(base.deep_input(dense, embs)).squeeze(1)
        logit = logit + base.bias
        if base.uses_linear:
            logit = logit + (base.linear(sparse) if base.linear is not None else first_order)
        return logit
