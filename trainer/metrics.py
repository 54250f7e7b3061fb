"""Test-split metrics: AUC and logloss (the field's standard pair)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        raise ValueError("AUC is undefined when the labels hold one class only")
    return float(binary_auroc(torch.from_numpy(probs).double(), torch.from_numpy(labels).long()))


def logloss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def summary(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"auc": auc(probs, labels), "logloss": logloss(probs, labels)}
