"""iterate_batches: TorchRec Batch layout, shuffling, and the distributed slicing rule."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from serving.features import FeatureSpec, Field
from trainer.data.batches import iterate_batches, num_batches
from trainer.data.cache import CachedDataset, build_or_load
from trainer.data.readers.table import TableReader


def id_dataset(n: int, seed: int = 0) -> CachedDataset:
    """In-memory dataset whose field "row" is the row number and "bag" has row % 3 values."""
    rng = np.random.default_rng(seed)
    lens = np.arange(n) % 3
    offsets = np.concatenate([[0], np.cumsum(lens)])
    spec = FeatureSpec("ids", "y", (Field("row", "categorical", (), num_ids=n), Field("bag", "bag", (), num_ids=3 * n)))
    return CachedDataset(
        path=Path("."),
        spec=spec,
        meta={},
        labels=(np.arange(n) % 2).astype(np.float32),
        split=rng.choice(3, n, p=[0.8, 0.1, 0.1]).astype(np.uint8),
        ids={"row": np.arange(n, dtype=np.int32)},
        bags={"bag": (offsets, np.arange(offsets[-1], dtype=np.int32) + 1)},
        dense=np.arange(n, dtype=np.float32)[:, None],
        groups=None,
        id_counts={},
    )


def rows_of(batch: Batch) -> list[int]:
    return batch.sparse_features["row"].values().tolist()


def test_layout_matches_from_lengths_sync(tmp_path, fixtures):
    fields = {"user": "categorical", "price": "numerical", "tags": "bag", "item": "categorical"}
    reader = TableReader(str(fixtures / "table_small.csv"), "clicked", fields)
    ds = build_or_load(reader, tmp_path, min_count=1, seed=0, split=(1, 0, 0), log=lambda _: None)
    (batch,) = list(iterate_batches(ds, "train", 8, shuffle=False, seed=0, epoch=0))
    kjt = batch.sparse_features
    assert kjt.keys() == ["user", "price", "tags", "item"] and kjt.stride() == 5
    assert kjt.values().dtype == torch.int64 and batch.labels.dtype == torch.float32
    assert batch.dense_features.shape == (5, 1) and batch.dense_features.dtype == torch.float32
    assert kjt["tags"].lengths().tolist() == [2, 1, 0, 3, 1] and kjt["user"].lengths().tolist() == [1] * 5
    assert batch.labels.tolist() == [1, 0, 1, 0, 0]
    ref = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths())
    assert ref.length_per_key() == kjt.length_per_key() and ref.offset_per_key() == kjt.offset_per_key()
    assert torch.equal(ref.offsets(), kjt.offsets())
    tags = ds.spec.field("tags")
    assert kjt["tags"].values().tolist() == tags.encode(["a", "b"]) + tags.encode(["b"]) + tags.encode(
        ["a", "c", "b"]
    ) + tags.encode(["c"])


def test_bags_follow_their_rows_under_shuffle():
    ds = id_dataset(1000)
    for batch in iterate_batches(ds, "train", 64, shuffle=True, seed=1, epoch=2):
        rows = rows_of(batch)
        bag = batch.sparse_features["bag"]
        assert bag.lengths().tolist() == [r % 3 for r in rows]
        off, vals = ds.bags["bag"]
        assert bag.values().tolist() == [int(v) for r in rows for v in vals[off[r] : off[r + 1]]]
        assert batch.dense_features[:, 0].tolist() == rows and batch.labels.tolist() == [r % 2 for r in rows]


def test_shuffle_order_is_fixed_by_seed_and_epoch():
    ds = id_dataset(500)
    order = lambda **kw: [r for b in iterate_batches(ds, "train", 50, **kw) for r in rows_of(b)]  # noqa: E731
    plain = order(shuffle=False, seed=0, epoch=0)
    assert plain == ds.indices("train").tolist()
    a = order(shuffle=True, seed=0, epoch=0)
    assert a == order(shuffle=True, seed=0, epoch=0) and sorted(a) == plain
    expected = ds.indices("train")[np.random.default_rng((0, 0)).permutation(len(plain))].tolist()
    assert a == expected
    assert a != order(shuffle=True, seed=0, epoch=1) and a != order(shuffle=True, seed=1, epoch=0)


@pytest.mark.parametrize("n, batch_size, world_size", [(1000, 64, 2), (1000, 64, 3), (397, 50, 4), (10, 4, 3)])
def test_ranks_together_see_the_single_process_rows_in_order(n, batch_size, world_size):
    ds = id_dataset(n)
    single = [rows_of(b) for b in iterate_batches(ds, "train", batch_size, shuffle=True, seed=5, epoch=1)]
    ranks = [
        [
            rows_of(b)
            for b in iterate_batches(
                ds, "train", batch_size, shuffle=True, seed=5, epoch=1, rank=r, world_size=world_size
            )
        ]
        for r in range(world_size)
    ]
    counts = {len(r) for r in ranks}
    assert counts == {num_batches(ds, "train", batch_size, world_size)}  # every rank: same count
    n_train = len(ds.indices("train"))
    dropped = n_train % batch_size if 0 < n_train % batch_size < world_size else 0
    assert len(single) == num_batches(ds, "train", batch_size) == -(-n_train // batch_size)
    flat_single = [r for b in single for r in b]
    assert [r for step in zip(*ranks) for part in step for r in part] == flat_single[: n_train - dropped]
    for step in zip(*ranks):  # contiguous near-equal slices
        sizes = [len(p) for p in step]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_final_batch_smaller_than_world_size_is_dropped():
    ds = id_dataset(40)
    n_train = len(ds.indices("train"))
    batch_size = n_train - 1  # leaves one row for a second global batch
    assert num_batches(ds, "train", batch_size, 1) == 2 and num_batches(ds, "train", batch_size, 2) == 1
    r0 = list(iterate_batches(ds, "train", batch_size, shuffle=False, seed=0, epoch=0, rank=0, world_size=2))
    r1 = list(iterate_batches(ds, "train", batch_size, shuffle=False, seed=0, epoch=0, rank=1, world_size=2))
    assert len(r0) == len(r1) == 1
    with pytest.raises(ValueError):
        next(iterate_batches(ds, "train", 1, shuffle=False, seed=0, epoch=0, rank=0, world_size=2))
