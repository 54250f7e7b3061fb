"""Readers on tiny hand-written files, malformed lines included."""

import gzip
import os

import numpy as np
import pytest

from trainer.data.readers.avazu import CATEGORICAL, AvazuReader
from trainer.data.readers.base import DataError, Head, Reader
from trainer.data.readers.criteo import CriteoReader
from trainer.data.readers.ml1m import MovieLens1MReader
from trainer.data.readers.table import TableReader


def rows_of(reader, chunk_rows=3):
    chunks = list(reader.iter_chunks(chunk_rows))
    assert all(0 < len(c) <= chunk_rows for c in chunks)
    labels = np.concatenate([c.labels for c in chunks])
    cols = {}
    for d in reader.fields():
        parts = [c.columns[d.name] for c in chunks]
        cols[d.name] = np.concatenate(parts) if isinstance(parts[0], np.ndarray) else [v for p in parts for v in p]
    return labels, cols


def test_criteo(fixtures):
    r = CriteoReader(str(fixtures / "criteo_small.tsv"))
    assert isinstance(r, Reader)
    assert [d.name for d in r.fields()] == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    labels, cols = rows_of(r)
    lines = (fixtures / "criteo_small.tsv").read_text().splitlines()
    assert labels.dtype == np.float32 and labels.tolist() == [float(x.split("\t")[0]) for x in lines]
    cells = [x.split("\t") for x in lines]
    for i in range(1, 27):
        assert cols[f"C{i}"] == [c[13 + i] for c in cells]
    assert any("" in cols[f"C{i}"] for i in range(1, 27))  # empty = missing, kept as ""
    for i in range(1, 14):
        np.testing.assert_array_equal(cols[f"I{i}"], [float(c[i]) if c[i] else np.nan for c in cells])
    assert np.isnan(cols["I7"][0])  # an empty numerical cell is missing


def test_criteo_gz_and_fingerprint_changes(tmp_path, fixtures):
    src = (fixtures / "criteo_small.tsv").read_bytes()
    gz = tmp_path / "day_0.gz"
    gz.write_bytes(gzip.compress(src))
    r = CriteoReader(str(gz))
    assert len(rows_of(r)[0]) == 8
    fp = r.fingerprint()
    gz.write_bytes(gzip.compress(src + src))
    os.utime(gz, ns=(1, 1))
    assert r.fingerprint() != fp and len(rows_of(r)[0]) == 16


def _criteo_line(label="1", i1="3", c1="abc"):
    return "\t".join([label, i1] + ["1"] * 12 + [c1] + ["x"] * 25)


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("1\t2\t3", "expected 40 columns, found 3"),
        (_criteo_line(i1="seven"), "'I1': 'seven' is not a finite number"),
        (_criteo_line(i1="nan"), "'I1': 'nan' is not a finite number"),
        (_criteo_line(label="2"), "label '2' is not 0 or 1"),
        (_criteo_line(label="yes"), "label 'yes' is not 0 or 1"),
    ],
)
def test_criteo_malformed_line_names_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join([_criteo_line(), _criteo_line(label="0"), bad, _criteo_line()]) + "\n")
    with pytest.raises(DataError) as err:
        rows_of(CriteoReader(str(path)), chunk_rows=2)
    assert err.value.path == str(path) and err.value.line == 3
    assert f"{path}:3:" in str(err.value) and problem in str(err.value)


def test_blank_lines_and_crlf_are_fine(tmp_path):
    path = tmp_path / "crlf.tsv"
    path.write_bytes(("\r\n".join([_criteo_line(c1="a"), "", _criteo_line(label="0", c1="b")]) + "\r\n").encode())
    labels, cols = rows_of(CriteoReader(str(path)))
    assert labels.tolist() == [1, 0] and cols["C1"] == ["a", "b"] and cols["C26"] == ["x", "x"]


def test_bad_lines_are_counted_and_capped(tmp_path):
    path = tmp_path / "bad.tsv"
    good = [_criteo_line(c1=f"t{i}") for i in range(6)]
    path.write_text(
        "\n".join(good[:2] + ["1\tshort", _criteo_line(i1="x")] + good[2:] + [_criteo_line(label="7")]) + "\n"
    )
    r = CriteoReader(str(path), max_bad_lines=3)
    labels, cols = rows_of(r, chunk_rows=4)
    assert r.bad_lines == 3 and len(labels) == 6 and cols["C1"] == [f"t{i}" for i in range(6)]
    assert any(":3:" in e for e in r.bad_examples) and any(":9:" in e for e in r.bad_examples)
    strict = CriteoReader(str(path), max_bad_lines=2)
    with pytest.raises(DataError, match=r"bad.tsv:9: .*more than max_bad_lines=2"):
        rows_of(strict)


def test_avazu(fixtures):
    r = AvazuReader(str(fixtures / "avazu_small.csv"))
    assert [d.name for d in r.fields()] == list(CATEGORICAL) and len(CATEGORICAL) == 22
    assert all(d.kind == "categorical" for d in r.fields())
    labels, cols = rows_of(r)
    assert labels.tolist() == [0, 1, 0, 0, 1, 0]
    assert cols["hour"][:3] == ["14102100", "14102101", "14102102"] and cols["C20"][0] == "-1"
    assert "id" not in cols and "click" not in cols


def test_avazu_header_and_label_errors(tmp_path, fixtures):
    text = (fixtures / "avazu_small.csv").read_text().splitlines()
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("\n".join([text[0].replace("site_id", "site")] + text[1:]))
    with pytest.raises(DataError, match=r"h.csv:1: header lacks Avazu column\(s\) \['site_id'\]"):
        AvazuReader(str(bad_header))
    bad_label = tmp_path / "l.csv"
    bad_label.write_text("\n".join(text[:3] + [text[3].replace(",0,", ",x,", 1)] + text[4:]))
    with pytest.raises(DataError, match=r"l.csv:4: label 'x' is not 0 or 1"):
        rows_of(AvazuReader(str(bad_label)))


def test_table_reader(fixtures):
    fields = {"user": "categorical", "price": "numerical", "tags": "bag", "item": "categorical"}
    r = TableReader(str(fixtures / "table_small.csv"), "clicked", fields)
    assert [(d.name, d.kind) for d in r.fields()] == list(fields.items())
    labels, cols = rows_of(r, chunk_rows=2)
    assert labels.tolist() == [1, 0, 1, 0, 0]
    assert cols["item"] == ["i1", "i2", "i3", "i,4", "i1"]  # CSV quoting honoured
    assert cols["tags"] == [["a", "b"], ["b"], [], ["a", "c", "b"], ["c"]]
    np.testing.assert_array_equal(cols["price"], [3.5, np.nan, 10, 0.5, -2])
    assert r.dataset_id == "table-table_small"


def test_table_tsv_bag_sep_and_errors(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("y\tg\tn\n1\ta;b\t1\n0\t\t2\n1\tc\tlots\n")
    r = TableReader(str(path), "y", {"g": "bag", "n": "numerical"}, delimiter="\t", bag_sep=";", max_bad_lines=1)
    labels, cols = rows_of(r)
    assert cols["g"] == [["a", "b"], []] and r.bad_lines == 1
    with pytest.raises(DataError, match=r"t.tsv:4: field 'n': 'lots' is not a finite number"):
        rows_of(TableReader(str(path), "y", {"g": "bag", "n": "numerical"}, delimiter="\t"))
    with pytest.raises(DataError, match=r"header lacks column\(s\) \['z'\]"):
        TableReader(str(path), "y", {"z": "categorical"}, delimiter="\t")
    with pytest.raises(ValueError, match="bad kinds"):
        TableReader(str(path), "y", {"g": "dense"}, delimiter="\t")
    with pytest.raises(DataError, match="file not found"):
        TableReader(str(tmp_path / "nope.csv"), "y", {"g": "bag"})


def test_movielens1m(fixtures):
    r = MovieLens1MReader(str(fixtures / "ml1m"))
    labels, cols = rows_of(r, chunk_rows=2)
    assert labels.tolist() == [1, 0, 1, 0, 1]  # rating >= 4
    assert cols["user_id"] == ["1", "1", "2", "2", "3"] and cols["item_id"][3] == "3408"
    assert cols["gender"][0] == "F" and cols["age"][0] == "1" and cols["occupation"][2] == "16"
    assert cols["zip_code"][4] == "55117"
    assert cols["release_year"] == ["1975", "1996", "1975", "2000", "1996"]
    assert cols["genres"][1] == ["Animation", "Children's", "Musical"] and cols["genres"][0] == ["Drama"]


def test_movielens1m_unknown_ids(tmp_path, fixtures):
    for name in ("users.dat", "movies.dat"):
        (tmp_path / name).write_bytes((fixtures / "ml1m" / name).read_bytes())
    (tmp_path / "ratings.dat").write_text("1::1193::5::1\n9::1193::5::1\n1::42::3::1\n1::661::x::1\n")
    with pytest.raises(DataError, match=r"ratings.dat:2: user_id '9' has no user record"):
        rows_of(MovieLens1MReader(str(tmp_path)))
    r = MovieLens1MReader(str(tmp_path), max_bad_lines=5)
    labels, _ = rows_of(r)
    assert len(labels) == 1 and r.bad_lines == 3
    with pytest.raises(DataError, match="not a directory"):
        MovieLens1MReader(str(tmp_path / "ratings.dat"))


def test_head_caps_rows(fixtures):
    r = Head(CriteoReader(str(fixtures / "criteo_small.tsv")), 5)
    labels, cols = rows_of(r, chunk_rows=3)
    assert len(labels) == 5 and len(cols["C1"]) == 5
    assert r.fingerprint() != r.inner.fingerprint()
