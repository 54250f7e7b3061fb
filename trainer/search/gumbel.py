"""Gumbel-softmax temperature of the searches that mix candidates (AutoDPQ, AutoDim)."""

from __future__ import annotations

import torch
from torch import nn


class GumbelSchedule:
    """τ = max(minimum, start − s·decay) at weight step s (papers: 1, 5e-5, 0.01)."""

    def __init__(self, start: float = 1.0, decay: float = 5e-5, minimum: float = 0.01):
        self.start, self.decay, self.minimum = start, decay, minimum

    def __call__(self, step: int) -> float:
        return max(self.minimum, self.start - step * self.decay)


class GumbelClock:
    """The Gumbel-softmax temperature, following the search's weight steps.

    The loop steps weights and α alternately on the same network, so the clock counts
    search-phase training forwards (`tick`) and the method's architecture steps; weight
    steps are the difference.

    Args:
        schedule: τ per weight step.
        hard: straight-through (one-hot forward, soft gradient backward).
        per_row: one noise draw per row; else one per batch, shared by its rows (then every
            torchrun rank draws the same noise, as a 1-process run does).
    """

    def __init__(self, schedule: GumbelSchedule | None = None, hard: bool = False, per_row: bool = False):
        self.schedule = schedule or GumbelSchedule()
        self.hard = hard
        self.per_row = per_row
        self.forwards = 0
        self.arch_steps = 0

    def tick(self) -> None:
        self.forwards += 1

    @property
    def weight_steps(self) -> int:
        return self.forwards - self.arch_steps

    @property
    def tau(self) -> float:
        return self.schedule(self.weight_steps)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Gumbel-softmax weights over the last dim of `logits` [..., rows, K] at the current τ."""
        if self.per_row:
            return nn.functional.gumbel_softmax(logits, tau=self.tau, hard=self.hard, dim=-1)
        shared = nn.functional.gumbel_softmax(logits[..., :1, :], tau=self.tau, hard=self.hard, dim=-1)
        return shared.expand_as(logits)
