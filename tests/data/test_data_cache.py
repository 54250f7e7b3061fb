"""build_or_load: splits, train-only vocabularies, encoding, reuse and atomicity."""

import os

import numpy as np
import pytest

from serving.features import OOV_ID, dense_value
from trainer.data.cache import SPLITS, CachedDataset, build_or_load
from trainer.data.readers.base import DataError
from trainer.data.readers.criteo import CriteoReader
from trainer.data.readers.synthetic import SyntheticParams, SyntheticReader
from trainer.data.readers.table import TableReader


class Counting:
    """Wraps a reader; counts passes and can fail on a chosen pass."""

    def __init__(self, inner, fail_on_pass=None):
        self.inner, self.passes, self.fail_on_pass = inner, 0, fail_on_pass
        self.dataset_id, self.label = inner.dataset_id, inner.label

    bad_lines = property(lambda self: self.inner.bad_lines)
    fields = property(lambda self: self.inner.fields)
    fingerprint = property(lambda self: self.inner.fingerprint)

    def iter_chunks(self, chunk_rows):
        self.passes += 1
        for i, chunk in enumerate(self.inner.iter_chunks(chunk_rows)):
            if self.passes == self.fail_on_pass and i == 1:
                raise RuntimeError("disk on fire")
            yield chunk


def small_synthetic(rows=20_000, seed=0):
    return SyntheticReader(
        SyntheticParams(rows=rows, n_categorical=4, n_numerical=2, signal_fields_per_group=1, seed=seed)
    )


def test_split_proportions_deterministic_and_chunk_invariant(tmp_path):
    a = build_or_load(small_synthetic(), tmp_path / "a", min_count=1, seed=3, log=lambda _: None, chunk_rows=1000)
    b = build_or_load(small_synthetic(), tmp_path / "b", min_count=1, seed=3, log=lambda _: None, chunk_rows=7777)
    c = build_or_load(small_synthetic(), tmp_path / "c", min_count=1, seed=4, log=lambda _: None)
    assert a.split.tobytes() == b.split.tobytes() and a.split.tobytes() != c.split.tobytes()
    fractions = [len(a.indices(s)) / a.n_rows for s in SPLITS]
    assert abs(fractions[0] - 0.8) < 0.015 and abs(fractions[1] - 0.1) < 0.01 and abs(fractions[2] - 0.1) < 0.01
    assert sorted(np.concatenate([a.indices(s) for s in SPLITS]).tolist()) == list(range(a.n_rows))
    assert a.meta["rows"] == {s: len(a.indices(s)) for s in SPLITS}
    assert a.groups is not None and a.groups.dtype == np.int32 and a.labels.dtype == np.float32
    for name in a.ids:
        assert np.array_equal(a.ids[name], b.ids[name])
    with pytest.raises(ValueError):
        a.indices("training")


def _write_table(path, n=300):
    lines = ["y,u,c,x,g"]
    for i in range(n):
        tags = "|".join(["p", "q", "r"][: i % 4])
        x = "" if i % 7 == 0 else str((i % 13) - 3)
        lines.append(f"{i % 2},t{i},{'abc'[i % 3] if i % 10 else 'rare' + str(i)},{x},{tags}")
    path.write_text("\n".join(lines) + "\n")
    return [line.split(",") for line in lines[1:]]


def test_vocab_is_fitted_on_train_rows_only_and_encoding_matches_serving(tmp_path):
    raw = _write_table(tmp_path / "t.csv")
    fields = {"u": "categorical", "c": "categorical", "x": "numerical", "g": "bag"}
    ds = build_or_load(
        TableReader(str(tmp_path / "t.csv"), "y", fields), tmp_path / "cache", min_count=2, seed=0, log=lambda _: None
    )
    spec = ds.spec
    train = set(ds.indices("train").tolist())
    # every u token is unique, so with min_count 2 all are OOV; c's "rare…" tokens too
    assert spec.field("u").vocab == () and (ds.ids["u"] == OOV_ID).all()
    assert set(spec.field("c").vocab) == {"a", "b", "c"}
    counts = spec.field("c").counts
    assert list(counts) == sorted(counts, reverse=True)
    assert counts == tuple(sum(1 for i in train if raw[i][2] == t) for t in spec.field("c").vocab)  # train rows only
    oov_train = sum(1 for i in train if raw[i][2].startswith("rare"))
    assert ds.id_counts["c"].tolist() == [oov_train, *counts]
    for i, row in enumerate(raw):
        _, u, c, x, g = row
        assert ds.ids["u"][i] == spec.field("u").encode(u)
        assert ds.ids["c"][i] == spec.field("c").encode(c)
        assert ds.ids["x"][i] == spec.field("x").encode(x)
        assert ds.dense[i, 0] == pytest.approx(dense_value(x), rel=1e-6)
        off, vals = ds.bags["g"]
        assert vals[off[i] : off[i + 1]].tolist() == spec.field("g").encode(g.split("|") if g else [])
    assert ds.dense.shape == (len(raw), 1) and ds.groups is None


def test_min_count_one_keeps_train_tokens_and_oovs_unseen_ones(tmp_path):
    raw = _write_table(tmp_path / "t.csv")
    ds = build_or_load(
        TableReader(str(tmp_path / "t.csv"), "y", {"u": "categorical"}),
        tmp_path / "c",
        min_count=1,
        seed=0,
        log=lambda _: None,
    )
    is_train = ds.split == 0
    assert (ds.ids["u"][is_train] != OOV_ID).all() and (ds.ids["u"][~is_train] == OOV_ID).all()
    assert len(ds.spec.field("u").vocab) == is_train.sum() and ds.spec.field("u").vocab == tuple(
        sorted(ds.spec.field("u").vocab)
    )
    assert len(raw) == ds.n_rows


def test_criteo_cache_matches_serving_encoding(tmp_path, fixtures):
    path = fixtures / "criteo_small.tsv"
    ds = build_or_load(CriteoReader(str(path)), tmp_path, min_count=1, seed=0, split=(1, 0, 0), log=lambda _: None)
    assert ds.meta["rows"] == {"train": 8, "val": 0, "test": 0}
    assert ds.dense.shape == (8, 13) and ds.spec.numerical == [f"I{i}" for i in range(1, 14)]
    for i, line in enumerate(path.read_text().splitlines()):
        cells = line.split("\t")
        assert ds.labels[i] == float(cells[0])
        for j, f in enumerate(ds.spec.fields):
            assert ds.ids[f.name][i] == f.encode(cells[1 + j]) != OOV_ID


def test_precoded_fields_pass_through_or_fold_rare_ids(tmp_path):
    reader = small_synthetic(5000)
    fast = build_or_load(reader, tmp_path, min_count=1, seed=0, log=lambda _: None)
    chunks = list(reader.iter_chunks(5000))
    f = fast.spec.field("C1")
    assert f.vocab == () and f.num_ids == reader.vocab_sizes[0] + 1
    assert np.array_equal(fast.ids["C1"], chunks[0].columns["C1"])
    assert fast.id_counts["C1"].sum() == len(fast.indices("train"))
    folded = build_or_load(reader, tmp_path, min_count=5, seed=0, log=lambda _: None)
    g = folded.spec.field("C1")
    assert g.num_ids == 0 and all(c >= 5 for c in g.counts)
    raw = chunks[0].columns["C1"]
    assert all(folded.ids["C1"][i] == g.encode(str(raw[i])) for i in range(0, 5000, 7))
    assert (folded.ids["C1"] == OOV_ID).any()


def test_cache_is_reused_without_reparsing(tmp_path, logs):
    reader = Counting(small_synthetic(3000))
    first = build_or_load(reader, tmp_path, min_count=1, seed=0, log=logs.append)
    assert reader.passes == 2 and not any("reusing" in m for m in logs)
    again = build_or_load(reader, tmp_path, min_count=1, seed=0, log=logs.append)
    assert reader.passes == 2 and any("reusing" in m for m in logs)
    assert again.path == first.path and np.array_equal(again.labels, first.labels)
    build_or_load(reader, tmp_path, min_count=1, seed=1, log=logs.append)  # new seed → new cache
    assert reader.passes == 4 and len([p for p in tmp_path.iterdir()]) == 2


def test_changed_source_file_rebuilds(tmp_path, fixtures):
    path = tmp_path / "c.tsv"
    path.write_bytes((fixtures / "criteo_small.tsv").read_bytes())
    a = build_or_load(CriteoReader(str(path)), tmp_path / "cache", min_count=1, seed=0, log=lambda _: None)
    with open(path, "a") as fh:
        fh.write(path.read_text().splitlines()[0] + "\n")
    os.utime(path, ns=(10**9, 10**9))
    b = build_or_load(CriteoReader(str(path)), tmp_path / "cache", min_count=1, seed=0, log=lambda _: None)
    assert a.path != b.path and (a.n_rows, b.n_rows) == (8, 9)


@pytest.mark.parametrize("fail_on_pass", [1, 2])
def test_crash_leaves_no_cache_that_looks_complete(tmp_path, fail_on_pass):
    reader = Counting(small_synthetic(5000), fail_on_pass=fail_on_pass)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_or_load(reader, tmp_path, min_count=1, seed=0, log=lambda _: None, chunk_rows=1000)
    assert list(tmp_path.iterdir()) == []  # neither a final nor a temporary directory
    ds = build_or_load(
        Counting(small_synthetic(5000)), tmp_path, min_count=1, seed=0, log=lambda _: None, chunk_rows=1000
    )
    assert ds.n_rows == 5000 and [p.name for p in tmp_path.iterdir()] == [ds.path.name]
    assert (ds.path / "meta.json").is_file() and CachedDataset.load(ds.path).n_rows == 5000


def test_bad_lines_reach_the_meta(tmp_path, fixtures):
    path = tmp_path / "c.tsv"
    path.write_text((fixtures / "criteo_small.tsv").read_text() + "1\tbroken\n")
    with pytest.raises(DataError, match=r"c.tsv:9: expected 40 columns"):
        build_or_load(CriteoReader(str(path)), tmp_path / "cache", min_count=1, seed=0, log=lambda _: None)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
    logs = []
    ds = build_or_load(
        CriteoReader(str(path), max_bad_lines=1), tmp_path / "cache", min_count=1, seed=0, log=logs.append
    )
    assert ds.meta["bad_lines"] == 1 and ds.n_rows == 8 and "c.tsv:9" in ds.meta["bad_examples"][0]
    assert any("c.tsv:9" in m for m in logs)


def test_reader_without_rows_is_an_error(tmp_path):
    empty = tmp_path / "e.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="no rows"):
        build_or_load(CriteoReader(str(empty)), tmp_path / "cache", min_count=1, seed=0, log=lambda _: None)


def test_empty_bags_and_no_numericals(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("y,g\n1,\n0,\n")
    ds = build_or_load(
        TableReader(str(path), "y", {"g": "bag"}),
        tmp_path / "c",
        min_count=1,
        seed=0,
        split=(1, 0, 0),
        log=lambda _: None,
    )
    off, vals = ds.bags["g"]
    assert off.tolist() == [0, 0, 0] and len(vals) == 0 and ds.dense.shape == (2, 0)


def test_numerical_with_a_huge_bucket_range_still_matches_serving(tmp_path):
    values = ["-1000000000000", "7", "", "2.5", "-1000000000000", "1e300", "7"]
    path = tmp_path / "t.csv"
    path.write_text("y,x\n" + "".join(f"{i % 2},{v}\n" for i, v in enumerate(values)))
    ds = build_or_load(
        TableReader(str(path), "y", {"x": "numerical"}),
        tmp_path / "c",
        min_count=1,
        seed=0,
        split=(1, 0, 0),
        log=lambda _: None,
    )
    f = ds.spec.field("x")
    assert ds.ids["x"].tolist() == [f.encode(v) for v in values] and len(f.vocab) == 5
