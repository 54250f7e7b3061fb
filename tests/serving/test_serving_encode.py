"""Request encoding: raw values map like training did; bad input is refused by row and field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.batch import FeatureBatch
from serving.encode import Column, Encoder, Limits
from serving.errors import InvalidRequest
from serving.features import bucket_token

from serving_fixtures import random_rows

GOOD = {"user": "u3", "item": 7, "age": 31.0, "genres": ["drama", "noir"], "city": "oslo"}


def rows_with(i: int, n: int = 3, **change) -> list[dict]:
    """n good rows; row i gets `change` (a value None removes the field)."""
    rows = [dict(GOOD) for _ in range(n)]
    for k, v in change.items():
        if v is None:
            rows[i].pop(k)
        else:
            rows[i][k] = v
    return rows


def test_raw_values_map_through_the_spec(spec):
    batch = Encoder(spec).encode_rows([GOOD, {**GOOD, "user": "never-seen", "age": "", "genres": [], "city": 2}])
    user, item, age, genres, city = batch.ids
    assert user.tolist() == [spec.field("user").token_id("u3"), 0]  # unseen → OOV id 0
    assert item.tolist() == [7, 7]
    assert age.tolist() == [spec.field("age").token_id(bucket_token(31.0)), spec.field("age").token_id("")]
    assert genres.tolist() == [1, 5] and batch.lengths[3].tolist() == [2, 0]
    assert city.tolist() == [2, 2]  # token "oslo" and pre-encoded id 2 agree
    assert batch.dense[:, 0].tolist() == pytest.approx([math.log1p(31.0), 0.0])  # missing → 0
    assert batch.dense.dtype == np.float32


def test_numerical_token_and_number_agree(spec):
    a = Encoder(spec).encode_rows(rows_with(0, 1, age="31"))
    b = Encoder(spec).encode_rows(rows_with(0, 1, age=31))
    assert a.ids[2].tolist() == b.ids[2].tolist() and a.dense.tolist() == b.dense.tolist()


def to_columns(spec, rows) -> dict[str, Column]:
    """The columnar form of python rows whose bags are all tokens or all ids per field."""
    cols = {}
    for f in spec.fields:
        values = [r[f.name] for r in rows]
        if f.kind == "bag":
            flat = [v for bag in values for v in bag]
            lens = [len(bag) for bag in values]
            cols[f.name] = Column(tokens=flat, lengths=lens) if all(isinstance(v, str) for v in flat) else Column(ids=flat, lengths=lens)
        elif f.kind == "numerical":
            cols[f.name] = Column(numbers=values)
        else:
            cols[f.name] = Column(ids=values) if isinstance(values[0], int) else Column(tokens=values)
    return cols


def test_columns_equal_rows(spec):
    rows = [
        {"user": f"u{i}", "item": i, "age": float(i * 7), "genres": ["drama", "comedy"][: i % 3], "city": "lima"}
        for i in range(6)
    ]
    enc = Encoder(spec)
    a, b = enc.encode_rows(rows), enc.encode_columns(len(rows), to_columns(spec, rows))
    assert np.array_equal(a.dense, b.dense)
    for x, y in zip(a.ids, b.ids):
        assert np.array_equal(x, y)
    assert np.array_equal(a.lengths[3], b.lengths[3])


def test_take_selects_rows_and_bags(spec):
    batch = Encoder(spec).encode_rows(random_rows(spec, 40, seed=3))
    order = np.array([5, 0, 39, 5, 17])
    part = batch.take(order)
    for i, r in enumerate(order):
        one = batch.take(np.array([r]))
        assert np.array_equal(part.take(np.array([i])).ids[3], one.ids[3])
    dense, kjt = part.to_inputs(spec.names)
    assert kjt.keys() == spec.names and kjt.stride() == 5 and tuple(dense.shape) == (5, 1)
    assert FeatureBatch.from_inputs(spec, dense, kjt).ids[3].tolist() == part.ids[3].tolist()


ROW_CASES = [
    # (description, row index, change, words the message must contain)
    ("unknown field", 1, {"colour": "red"}, ["row 1", "unknown field 'colour'"]),
    ("missing field", 2, {"city": None}, ["row 2", "missing field 'city'"]),
    ("categorical given a number", 0, {"city": 1.5}, ["row 0", "'city'", "wrong type"]),
    ("categorical given a list", 1, {"user": ["u1"]}, ["row 1", "'user'", "wrong type"]),
    ("categorical given None", 1, {"user": object()}, ["row 1", "'user'", "wrong type"]),
    ("categorical given a bool", 2, {"city": True}, ["row 2", "'city'", "not an integer"]),
    ("bag given a token", 0, {"genres": "drama"}, ["row 0", "'genres'", "wrong type"]),
    ("bag given an id", 2, {"genres": 3}, ["row 2", "'genres'", "wrong type"]),
    ("numerical given a list", 1, {"age": [3.0]}, ["row 1", "'age'", "wrong type"]),
    ("numerical bad token", 1, {"age": "thirty"}, ["row 1", "'age'", "not a number"]),
    ("NaN", 2, {"age": float("nan")}, ["row 2", "'age'", "not finite"]),
    ("+Inf", 0, {"age": float("inf")}, ["row 0", "'age'", "not finite"]),
    ("-Inf token", 1, {"age": "-inf"}, ["row 1", "'age'", "not finite"]),
    ("NaN token", 1, {"age": "nan"}, ["row 1", "'age'", "not finite"]),
    ("id too large", 1, {"item": 50}, ["row 1", "'item'", "out of range [0, 50)"]),
    ("negative id", 0, {"city": -1}, ["row 0", "'city'", "out of range"]),
    ("huge id", 2, {"user": 2**62}, ["row 2", "'user'", "out of range"]),
    ("bag id out of range", 1, {"genres": [1, 6]}, ["row 1", "'genres'", "id 6 out of range"]),
    ("bag mixed types", 2, {"genres": ["drama", 2]}, ["row 2", "'genres'", "not an integer"]),
    ("bag too long", 0, {"genres": ["drama"] * 9}, ["row 0", "'genres'", "exceeds the limit 8"]),
]


@pytest.mark.parametrize("what,row,change,words", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_rows_name_row_and_field(spec, what, row, change, words):
    with pytest.raises(InvalidRequest) as info:
        Encoder(spec, Limits(max_rows=10, max_bag=8)).encode_rows(rows_with(row, **change))
    for w in words:
        assert w in str(info.value), (what, str(info.value))


def test_batch_size_limits(spec):
    enc = Encoder(spec, Limits(max_rows=4))
    with pytest.raises(InvalidRequest, match="empty batch"):
        enc.encode_rows([])
    with pytest.raises(InvalidRequest, match="5 rows exceeds the limit of 4"):
        enc.encode_rows([GOOD] * 5)
    with pytest.raises(InvalidRequest, match="empty batch"):
        enc.encode_columns(0, {})
    with pytest.raises(InvalidRequest, match="row 1: a row must map"):
        enc.encode_rows([GOOD, ["not", "a", "mapping"]])


def good_columns(spec, n=3) -> dict[str, Column]:
    return to_columns(spec, [dict(GOOD) for _ in range(n)])


COLUMN_CASES = [
    ("unknown column", {"colour": Column(tokens=["a"] * 3)}, ["unknown field 'colour'"]),
    ("missing column", {"city": None}, ["missing field 'city'"]),
    ("two kinds set", {"city": Column(ids=[1, 1, 1], tokens=["a"] * 3)}, ["'city'", "exactly one"]),
    ("none set", {"city": Column()}, ["'city'", "exactly one"]),
    ("too few values", {"item": Column(ids=[1, 2])}, ["'item'", "2 values for 3 rows"]),
    ("too many values", {"age": Column(numbers=[1.0] * 4)}, ["'age'", "4 values for 3 rows"]),
    ("id out of range", {"item": Column(ids=[1, 99, 2])}, ["row 1", "'item'", "id 99 out of range"]),
    ("float ids", {"item": Column(ids=np.array([1.0, 2.0, 3.0]))}, ["'item'", "must be integers"]),
    ("NaN number", {"age": Column(numbers=[1.0, 2.0, float("nan")])}, ["row 2", "'age'", "not finite"]),
    ("Inf number", {"age": Column(numbers=[float("-inf"), 2.0, 1.0])}, ["row 0", "'age'", "not finite"]),
    ("numerical ids", {"age": Column(ids=[1, 2, 3])}, ["'age'", "wrong type"]),
    ("categorical numbers", {"city": Column(numbers=[1.0, 2.0, 3.0])}, ["'city'", "wrong type"]),
    ("lengths on a categorical", {"city": Column(ids=[1, 1, 1], lengths=[1, 1, 1])}, ["'city'", "lengths are for bag"]),
    ("bag without lengths", {"genres": Column(ids=[1, 2, 3])}, ["'genres'", "0 bag lengths for 3 rows"]),
    ("bag lengths short", {"genres": Column(ids=[1, 2], lengths=[1, 1])}, ["'genres'", "2 bag lengths for 3 rows"]),
    ("bag sum mismatch", {"genres": Column(ids=[1, 2, 3], lengths=[1, 1, 2])}, ["'genres'", "sum to 4 but 3 values"]),
    ("negative bag length", {"genres": Column(ids=[1], lengths=[2, -1, 0])}, ["row 1", "'genres'", "negative"]),
    ("bag too long", {"genres": Column(ids=[1] * 9, lengths=[0, 9, 0])}, ["row 1", "'genres'", "exceeds the limit 8"]),
    ("bag id out of range", {"genres": Column(ids=[1, 2, 3, 7], lengths=[1, 1, 2])}, ["row 2", "'genres'", "id 7 out of range"]),
    ("bag numbers", {"genres": Column(numbers=[1.0], lengths=[1, 0, 0])}, ["'genres'", "wrong type"]),
    ("numerical bad token", {"age": Column(tokens=["1", "x", ""])}, ["row 1", "'age'", "not a number"]),
]


@pytest.mark.parametrize("what,change,words", COLUMN_CASES, ids=[c[0] for c in COLUMN_CASES])
def test_bad_columns_name_field(spec, what, change, words):
    cols = good_columns(spec)
    for k, v in change.items():
        if v is None:
            cols.pop(k)
        else:
            cols[k] = v
    with pytest.raises(InvalidRequest) as info:
        Encoder(spec, Limits(max_rows=10, max_bag=8)).encode_columns(3, cols)
    for w in words:
        assert w in str(info.value), (what, str(info.value))
