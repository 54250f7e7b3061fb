"""data.label_positive: string labels in a CSV/TSV without rewriting the file."""

import numpy as np
import pytest

from trainer.data.config import DataConfig, load_dataset
from trainer.data.readers.base import DataError
from trainer.data.readers.table import TableReader


def _read(reader):
    chunks = list(reader.iter_chunks(2))
    return np.concatenate([c.labels for c in chunks]).tolist()


def test_named_positive_values_are_clicks_and_every_other_value_is_not(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("u,y\na,yes\nb,no\nc,click\nd, yes \ne,0\nf,1\n")
    r = TableReader(str(path), "y", {"u": "categorical"}, label_positive=["yes", "click"])
    assert _read(r) == [1, 0, 1, 1, 0, 0]  # spaces around a value do not matter; "1" is not named
    assert _read(TableReader(str(path), "y", {"u": "categorical"}, label_positive=["1"])) == [0, 0, 0, 0, 0, 1]


def test_an_empty_label_names_file_and_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("u,y\na,yes\nb,\nc,no\n")
    with pytest.raises(DataError, match=r"t.csv:3: the label is empty"):
        _read(TableReader(str(path), "y", {"u": "categorical"}, label_positive=["yes"]))
    r = TableReader(str(path), "y", {"u": "categorical"}, label_positive=["yes"], max_bad_lines=1)
    assert _read(r) == [1, 0] and r.bad_lines == 1


def test_without_label_positive_string_labels_stay_an_error_with_a_hint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("u,y\na,1\nb,yes\n")
    with pytest.raises(DataError, match=r"t.csv:3: label 'yes' is not 0 or 1 \(data.label_positive names"):
        _read(TableReader(str(path), "y", {"u": "categorical"}))


def test_label_positive_changes_the_fingerprint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("u,y\na,yes\n")
    plain = TableReader(str(path), "y", {"u": "categorical"}).fingerprint()
    yes = TableReader(str(path), "y", {"u": "categorical"}, label_positive=["yes"]).fingerprint()
    click = TableReader(str(path), "y", {"u": "categorical"}, label_positive=["click"]).fingerprint()
    assert len({plain, yes, click}) == 3


def test_config_checks_and_end_to_end(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("u,y\n" + "".join(f"u{i % 3},{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    base = {"source": "table", "path": str(path), "label": "y", "fields": {"u": "categorical"}, "cache_dir": str(tmp_path)}
    ds = load_dataset(DataConfig(**base, label_positive=["yes"]), log=lambda _: None)
    assert ds.labels.tolist() == [i % 2 for i in range(20)]
    assert any("data.label_positive" in p for p in DataConfig(**base, label_positive=["yes", "yes"]).validate())
    assert any("data.label_positive" in p for p in DataConfig(**base, label_positive=[" yes"]).validate())
    assert any("data.label_positive" in p for p in DataConfig(**base, label_positive=[""]).validate())
    other = DataConfig(source="synthetic", label_positive=["yes"]).validate()
    assert other == ["data.label_positive: only used by source 'table'"]
