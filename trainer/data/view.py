"""A view of a cached dataset restricted to some rows of each split (e.g. one iHAS cluster)."""

from __future__ import annotations

import numpy as np


class RowSubset:
    """Dataset view whose `indices(split)` keeps only the selected rows, in order.

    Args:
        ds: the full cached dataset.
        keep: split name → boolean mask over `ds.indices(split)`.
    """

    def __init__(self, ds, keep: dict[str, np.ndarray]):
        self._ds = ds
        self._indices = {split: ds.indices(split)[mask] for split, mask in keep.items()}

    def indices(self, split: str) -> np.ndarray:
        return self._indices[split]

    def __getattr__(self, name):
        return getattr(self._ds, name)
