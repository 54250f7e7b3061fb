"""Frontier scheme name (its `[frontier.schemes.<name>]` table) → plug-in (trainer.frontier.schemes)."""

from __future__ import annotations

from trainer.frontier.autodim import AutoDim
from trainer.frontier.autodpq import AutoDPQ
from trainer.frontier.schemes import FE, QR, Dim, Hash, LowDim, Others

SCHEMES = {"fe": FE, "dim": Dim, "others": Others, "hash": Hash, "qr": QR, "lowdim": LowDim, "autodpq": AutoDPQ,
           "autodim": AutoDim}
