"""CachedDataset rows → TorchRec `Batch`es, single-process or one rank of many.

Distributed rule: the split's rows are ordered (shuffled with `default_rng((seed, epoch))`
or kept ascending), cut into global batches of `batch_size`, and each global batch into
`world_size` contiguous near-equal slices; rank r takes slice r. The ranks together see
exactly the rows of a 1-process run, in the same order. A final global batch with fewer
rows than ranks is dropped, so every rank yields the same number of batches (sharded
model forwards are collectives: a rank that stops early would hang the others).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from trainer.data.cache import CachedDataset


def num_batches(ds: CachedDataset, split: str, batch_size: int, world_size: int = 1) -> int:
    """Batches each rank gets from `iterate_batches` (the same on every rank)."""
    return _count(len(ds.indices(split)), batch_size, world_size)


def _count(n: int, batch_size: int, world_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world_size else 0)


def iterate_batches(
    ds: CachedDataset,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """This rank's batches of one split.

    Args:
        ds: the dataset.
        split: "train", "val" or "test".
        batch_size: global batch size (all ranks together).
        shuffle: permute the rows (else ascending row order).
        seed: shuffle seed; with `epoch` it fixes the order.
        epoch: epoch number (a new order per epoch).
        rank: this process's rank.
        world_size: number of processes.

    Yields Batch(dense_features float32 [B, n_numerical], sparse_features a synced KJT
    (as KeyedJaggedTensor.from_lengths_sync builds it) with keys = every spec field in
    spec order, length 1 per row for single-valued fields and the bag size for bags,
    int64 values, int32 lengths; labels float32 [B]).
    """
    if batch_size < world_size or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= world_size > rank >= 0, got {batch_size}, {world_size}, {rank}")
    rows = ds.indices(split)
    if shuffle:
        rows = rows[np.random.default_rng((seed, epoch)).permutation(len(rows))]
    gather = BatchGather(ds)
    for b in range(_count(len(rows), batch_size, world_size)):
        chunk = rows[b * batch_size : (b + 1) * batch_size]
        lo, hi = len(chunk) * rank // world_size, len(chunk) * (rank + 1) // world_size
        yield gather(chunk[lo:hi])


class BatchGather:
    """Builds the Batch of any set of rows with vectorised gathers (no per-row Python).

    Args:
        ds: the dataset.
    """

    def __init__(self, ds: CachedDataset):
        self.ds = ds
        self.keys = ds.spec.names
        self.single = [ds.ids.get(f.name) for f in ds.spec.fields]  # None for bags
        self.bags = [ds.bags.get(f.name) for f in ds.spec.fields]

    def __call__(self, rows: np.ndarray) -> Batch:
        n = len(rows)
        values, lengths, per_key = [], [], []
        ones = np.ones(n, dtype=np.int32)
        for ids, bag in zip(self.single, self.bags):
            if ids is not None:
                values.append(ids[rows])
                lengths.append(ones)
                per_key.append(n)
            else:
                lens, flat = _gather_bag(*bag, rows)
                values.append(flat)
                lengths.append(lens)
                per_key.append(len(flat))
        # What from_lengths_sync would compute, but from numpy: its torch.sum over the
        # lengths costs milliseconds when intra-op threads contend for busy cores.
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=n,
            length_per_key=per_key,
            offset_per_key=[0, *np.cumsum(per_key).tolist()],
        )
        return Batch(
            dense_features=torch.from_numpy(np.ascontiguousarray(self.ds.dense[rows])),
            sparse_features=kjt,
            labels=torch.from_numpy(np.ascontiguousarray(self.ds.labels[rows])),
        )


def _gather_bag(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths int32, concatenated values) of the bags of `rows`, in row order: every
    value's source position is its bag's start plus its rank inside the bag."""
    starts = offsets[rows]
    lens = offsets[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return lens.astype(np.int32), values[:0]
    out_starts = np.cumsum(lens) - lens
    pos = np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lens)
    return lens.astype(np.int32), values[pos]
