"""Frontier scheme name (its `[frontier.schemes.<name>]` table) → plug-in (trainer.frontier.schemes)."""

from __future__ import annotations

from trainer.frontier.autodpq import AutoDPQ
from trainer.frontier.schemes import FE, Dim, Hash, LowDim, Others

SCHEMES = {"fe": FE, "dim": Dim, "others": Others, "hash": Hash, "lowdim": LowDim, "autodpq": AutoDPQ}
