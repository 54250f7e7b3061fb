"""iHAS Bernoulli gates over the concatenated embedding (the paper's search and deterministic modes).

``InstanceGates`` predicts one keep-probability per embedding coordinate of each row,
p = sigmoid(W E + b), and turns it into a 0/1 mask in one of three modes:

* ``open``: all ones (pretraining, when the base model must see every dim);
* ``stochastic``: straight-through Gumbel-softmax over {select, not-select} with logits
  (log p, log(1 − p)) and temperature τ: the forward value is an exact 0/1 sample of
  Bernoulli(p), the backward pass uses the soft sample's gradient (computed in closed
  form, see ``straight_through_gumbel``);
* ``deterministic``: p > the row's histogram threshold (``HistogramThreshold``); no
  randomness, so inference and clustering give the same mask for the same row.

``SharedGates`` (ablation iHAS-4) has the same interface but a single learned logit
vector shared by every row.

Initialisation (``init_prob``, default 0.9). The paper pretrains the base model with
the gates forced open and *then* initialises the gates. Starting them mostly open keeps
the masked input close to what the pretrained MLP saw: each step drops ~10% of the
dims (a dropout-like perturbation) instead of half of them. 0.9 rather than 0.99
because the straight-through gradient only reaches a gate when its Gumbel noise lands
near the decision boundary, which becomes rare as p → 1 (logit 2.2 vs 4.6). The bias
is set to logit(init_prob); the weight keeps PyTorch's default small uniform init,
which gives per-row, per-dim variation around init_prob — needed because the
polarisation term |p − p̄| has zero gradient while all p of a row are equal.
Call ``reset_parameters()`` at the pretrain → search switch.
"""

from __future__ import annotations

import enum
import math

import torch
from torch import nn

from trainer.search.ihas.threshold import HistogramThreshold


class GateMode(str, enum.Enum):
    """How the gates turn probabilities into a mask."""

    OPEN = "open"
    STOCHASTIC = "stochastic"
    DETERMINISTIC = "deterministic"


def gate_mask(
    logits: torch.Tensor, mode: GateMode, tau: float, threshold: HistogramThreshold
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask and probabilities from pre-sigmoid gate logits.

    Args:
        logits: [B, N*] pre-sigmoid gate logits z, p = sigmoid(z).
        mode: which selection to apply.
        tau: Gumbel-softmax temperature (stochastic mode only).
        threshold: per-row threshold searcher (deterministic mode only).

    Returns:
        (mask [B, N*] with values exactly 0/1, p [B, N*]).
    """
    p = torch.sigmoid(logits)
    if mode is GateMode.OPEN:
        return torch.ones_like(p), p
    if mode is GateMode.DETERMINISTIC:
        return threshold.mask(p.detach()), p
    return straight_through_gumbel(logits, tau), p


def straight_through_gumbel(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard 0/1 sample of Bernoulli(sigmoid(z)) with the Gumbel-softmax gradient.

    Gumbel-softmax over {select, not-select} with logits (log p, log(1 − p)) has the soft
    "select" value softmax(...)[0] = sigmoid((log p − log(1 − p) + g1 − g2) / τ) =
    sigmoid((z + L) / τ), because log p − log(1 − p) = z and the difference of two
    independent Gumbel(0, 1) draws is Logistic(0, 1). Computing it in this closed form
    gives the same distribution and gradients as F.gumbel_softmax on the stacked pair at a
    fraction of the cost (a softmax over a trailing dim of 2 and a scatter per element
    dominated the search step).

    Forward value hard − soft.detach() + soft: where hard = 1 the soft value s is > 0.5, so
    1 − s is exact (Sterbenz) and adding s back gives exactly 1; where hard = 0 it is
    −s + s = 0 exactly.
    """
    u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


class _GateBase(nn.Module):
    """Construction and mode handling shared by the instance-wise and shared gates.

    A subclass creates its parameters in `_make_parameters` and sets their starting
    values in `reset_parameters`, which the constructor calls once they exist; its
    `logits` give one gate per `dims_per_gate` consecutive dims. `units` is a variant's own
    size (FieldGates: the number of fields; MLPGates: the hidden width); the paper's gates
    take none.
    """

    dims_per_gate = 1

    def __init__(
        self,
        width: int,
        tau: float = 0.1,
        init_prob: float = 0.9,
        threshold: HistogramThreshold | None = None,
        units: int | None = None,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if not 0.0 < init_prob < 1.0:
            raise ValueError(f"init_prob must be in (0, 1), got {init_prob}")
        self.width = width
        self.tau = tau
        self.init_prob = init_prob
        self.threshold = threshold if threshold is not None else HistogramThreshold()
        self.units = units
        self._mode = GateMode.OPEN
        self._make_parameters()
        self.reset_parameters()

    def _make_parameters(self) -> None:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        raise NotImplementedError

    @property
    def mode(self) -> GateMode:
        """Current selection mode; set it with a ``GateMode`` or its string value."""
        return self._mode

    @mode.setter
    def mode(self, value: GateMode | str) -> None:
        self._mode = GateMode(value)  # a typo raises ValueError instead of silently picking one

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate the concatenated embedding.

        Args:
            emb: [B, N*] concatenated embedding E.

        Returns:
            (mask [B, N*] of exact 0/1 in emb's dtype, p [B, N*] keep-probabilities).
            The caller multiplies ``emb * mask``; p feeds the regularizer.
        """
        if emb.dim() != 2 or emb.shape[1] != self.width:
            raise ValueError(f"expected emb of shape [B, {self.width}], got {tuple(emb.shape)}")
        mask, p = gate_mask(self.logits(emb), self._mode, self.tau, self.threshold)
        if self.dims_per_gate > 1:  # one draw per gate, shared by the dims it covers
            mask, p = mask.repeat_interleave(self.dims_per_gate, 1), p.repeat_interleave(self.dims_per_gate, 1)
        return mask.to(emb.dtype), p

    def extra_repr(self) -> str:
        return f"width={self.width}, mode={self._mode.value}, tau={self.tau}, init_prob={self.init_prob}"


class InstanceGates(_GateBase):
    """Instance-wise Bernoulli gates: p = sigmoid(W E + b), one FC layer N* → N*.

    Args:
        width: N* = N·d, the length of the concatenated embedding.
        tau: Gumbel-softmax temperature for stochastic mode (paper default 0.1).
        init_prob: keep-probability the gates start at (module docstring).
        threshold: per-row threshold searcher for deterministic mode.
    """

    def _make_parameters(self) -> None:
        self.fc = nn.Linear(self.width, self.width)

    def reset_parameters(self) -> None:
        """(Re)initialise: default small weights, bias = logit(init_prob)."""
        self.fc.reset_parameters()
        nn.init.constant_(self.fc.bias, math.log(self.init_prob / (1.0 - self.init_prob)))

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid gate logits [B, N* / dims_per_gate] for embeddings [B, N*]."""
        return self.fc(emb)


class FieldGates(InstanceGates):
    """Field-level instance-wise gates (a labelled variant, not the paper's): the FC layer
    maps N* → N, one keep-probability per field per row, shared by the field's d dims, so a
    row keeps or drops whole fields. Arguments as InstanceGates, plus units = N (fields).
    """

    def _make_parameters(self) -> None:
        if not self.units or self.width % self.units:
            raise ValueError(f"width {self.width} is not a multiple of {self.units} fields")
        self.dims_per_gate = self.width // self.units
        self.fc = nn.Linear(self.width, self.units)


class MLPGates(_GateBase):
    """Instance-wise gates through a hidden layer (a labelled variant, not the paper's):
    p = sigmoid(W₂ ReLU(W₁ E + b₁) + b₂), so a row's gates can depend on feature
    combinations one linear layer cannot express. Arguments as InstanceGates, plus units =
    the hidden width.
    """

    def _make_parameters(self) -> None:
        if not self.units or self.units < 1:
            raise ValueError(f"the hidden width must be >= 1, got {self.units}")
        self.net = nn.Sequential(nn.Linear(self.width, self.units), nn.ReLU(), nn.Linear(self.units, self.width))

    def reset_parameters(self) -> None:
        for layer in (self.net[0], self.net[2]):
            layer.reset_parameters()
        nn.init.constant_(self.net[2].bias, math.log(self.init_prob / (1.0 - self.init_prob)))

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(emb)


class SharedGates(_GateBase):
    """One learned keep-probability vector shared by all rows (ablation iHAS-4).

    Same modes and interface as ``InstanceGates``; E is only read for its batch size,
    dtype and device. Stochastic masks are still drawn independently per row.

    Args:
        width: N* = N·d, the length of the concatenated embedding.
        tau: Gumbel-softmax temperature for stochastic mode.
        init_prob: keep-probability the gates start at.
        threshold: threshold searcher for deterministic mode.
    """

    # Jitter on the initial logits: with every p equal the polarisation term has no
    # gradient, and unlike InstanceGates there is no input-dependent term to break ties.
    INIT_JITTER = 0.1

    def _make_parameters(self) -> None:
        self.logit = nn.Parameter(torch.empty(self.width))

    def reset_parameters(self) -> None:
        """(Re)initialise: logit(init_prob) ± uniform jitter of INIT_JITTER."""
        with torch.no_grad():
            self.logit.uniform_(-self.INIT_JITTER, self.INIT_JITTER)
            self.logit.add_(math.log(self.init_prob / (1.0 - self.init_prob)))

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """The shared logits broadcast to [B, N*] in emb's dtype and device."""
        return self.logit.to(emb.dtype).expand(emb.shape[0], -1)
