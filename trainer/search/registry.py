"""Search method name → the class that implements trainer.search.interface.SearchMethod.

Adding a method = its package under trainer/search/, one entry here and one tiny config
under configs/tiny/ (the contract test runs every tiny config through the recipe).
"""

from __future__ import annotations

from trainer.search.aim.method import AIM
from trainer.search.autodim.method import AutoDim
from trainer.search.autodis.method import AutoDis
from trainer.search.autodpq.method import AutoDPQ
from trainer.search.autofis.method import AutoFIS
from trainer.search.ihas.method import IHAS

METHODS = {
    "ihas": IHAS,
    "autodpq": AutoDPQ,
    "autofis": AutoFIS,
    "aim": AIM,
    "autodim": AutoDim,
    "autodis": AutoDis,
}
