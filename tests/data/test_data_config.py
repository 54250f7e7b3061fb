"""DataConfig: per-source defaults, every problem reported, load_dataset end to end."""

import numpy as np
import pytest

from trainer.config import build_section
from trainer.data.config import DataConfig, load_dataset, make_reader
from trainer.data.readers.base import DataError, Head


def test_defaults_and_per_source_min_count():
    assert DataConfig().validate() == [] and DataConfig().min_count == 1
    assert DataConfig(source="criteo", path="x").min_count == 10
    assert DataConfig(source="avazu", path="x").min_count == 5
    assert DataConfig(source="avazu", path="x", min_count=2).min_count == 2
    assert DataConfig(source="synthetic", rows=10).validate() == []


def test_every_problem_is_reported_with_its_key():
    cfg = DataConfig(
        source="table", min_count=0, max_rows=-1, split=[0.8, 0.2], delimiter=";;", label="y",
        fields={"y": "categorical", "bad name": "categorical", "t": "dense"}, rows=0,
    )  # fmt: skip
    problems = cfg.validate()
    text = "\n".join(problems)
    assert all(p.startswith("data.") for p in problems)
    for key in ("data.path", "data.min_count", "data.max_rows", "data.split", "data.delimiter", "data.fields.bad name",
                "data.fields.t", "data.fields: the label", "data.rows"):  # fmt: skip
        assert key in text, key
    assert "data.source" in "\n".join(DataConfig(source="parquet").validate())
    synth = DataConfig(source="synthetic", n_groups=5, signal_fields_per_group=6, vocab_min=0, path="p").validate()
    assert any("signal_fields_per_group" in p for p in synth) and any("vocab_min" in p for p in synth)
    assert any(p.startswith("data.path") for p in synth)


def test_through_the_config_loader():
    problems = []
    cfg = build_section(
        DataConfig, {"source": "synthetic", "rows": 1000, "zipf_a": 1, "split": [8, 1, 1]}, "data", problems
    )
    assert problems == [] and cfg.zipf_a == 1.0 and cfg.split == [8.0, 1.0, 1.0]
    build_section(
        DataConfig, {"source": "criteo", "min_count": "ten", "fields": {"a": "categorical"}}, "data", problems
    )
    assert any("data.min_count" in p for p in problems) and any("data.fields" in p for p in problems)
    assert any("data.path" in p for p in problems)


def test_load_dataset_synthetic_and_max_rows(tmp_path, logs):
    cfg = DataConfig(
        source="synthetic",
        rows=3000,
        n_categorical=4,
        n_numerical=1,
        signal_fields_per_group=1,
        cache_dir=str(tmp_path),
    )
    ds = load_dataset(cfg, log=logs.append)
    assert ds.n_rows == 3000 and ds.groups is not None and ds.spec.names == ["I1", "C1", "C2", "C3", "C4"]
    assert ds.meta["dataset"] == "synthetic" and ds.dense.shape == (3000, 1)
    capped = DataConfig(**{**cfg.__dict__, "max_rows": 1000})
    assert isinstance(make_reader(capped), Head)
    small = load_dataset(capped, log=logs.append)
    assert small.n_rows == 1000 and small.path != ds.path
    assert np.array_equal(small.ids["C1"], ds.ids["C1"][:1000])


def test_load_dataset_table(tmp_path, fixtures):
    cfg = DataConfig(
        source="table", path=str(fixtures / "table_small.csv"), label="clicked",
        fields={"user": "categorical", "tags": "bag"}, cache_dir=str(tmp_path), split=[1, 0, 0],
    )  # fmt: skip
    ds = load_dataset(cfg, log=lambda _: None)
    assert ds.n_rows == 5 and ds.spec.label == "clicked" and set(ds.spec.field("user").vocab) == {"u1", "u2", "u3"}


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="data.path"):
        load_dataset(DataConfig(source="criteo", cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="make setup"):
        load_dataset(DataConfig(path=str(tmp_path / "nope.whl"), cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="file not found"):
        load_dataset(DataConfig(source="criteo", path=str(tmp_path / "x.tsv"), cache_dir=str(tmp_path)))
