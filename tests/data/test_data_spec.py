"""FeatureSpec contract (serving/features.py) and the cache's vectorised twins of it."""

import math

import numpy as np
import pytest

from serving.batch import dense_column
from serving.features import LOG, OOV_ID, FeatureSpec, FeatureSpecError, Field, bucket_token, dense_value
from trainer.data.numerical import as_float, bucket_tokens, bucketize


@pytest.mark.parametrize(
    "raw, token",
    [
        ("", ""), (None, ""),  # missing is its own token
        ("-5", "-5"), (-1, "-1"), ("-0.5", "-1"),  # x <= 2: the value itself, floored
        ("0", "0"), ("1.9", "1"), ("2", "2"),
        ("3", "1"),  # ln(3)^2 = 1.207
        ("10", "5"),  # ln(10)^2 = 5.30
        ("150", "25"),  # ln(150)^2 = 25.1
        ("4096", "69"),  # ln(4096)^2 = 69.2
    ],
)  # fmt: skip
def test_bucket_token(raw, token):
    assert bucket_token(raw) == token
    if raw not in ("", None) and float(raw) > 2:
        assert int(token) == math.floor(math.log(float(raw)) ** 2)


def test_bucket_and_dense_refuse_non_finite():
    for bad in ("nan", "inf", float("-inf")):
        with pytest.raises(FeatureSpecError):
            bucket_token(bad)
        with pytest.raises(FeatureSpecError):
            dense_value(bad)
    assert dense_value("") == 0.0 and dense_value("-3") == 0.0 and dense_value("9") == pytest.approx(math.log(10))


def test_vectorised_buckets_match_bucket_token_exactly():
    rng = np.random.default_rng(0)
    k = np.arange(1, 400, dtype=np.float64)
    edges = np.exp(np.sqrt(k))  # where floor(ln(x)^2) steps: rounding is most fragile here
    x = np.concatenate([
        np.arange(-50, 3000, dtype=np.float64), rng.uniform(-3, 3, 500), np.exp(rng.uniform(0, 30, 2000)),
        edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf), [np.nan, 2.0, 2.0000001, -0.0],
    ])  # fmt: skip
    want = [bucket_token(None if np.isnan(v) else float(v)) for v in x]
    assert bucket_tokens(bucketize(x)) == want
    dense = dense_column(x, LOG)
    assert dense.dtype == np.float32
    np.testing.assert_allclose(dense, [dense_value(None if np.isnan(v) else float(v)) for v in x], rtol=1e-6)


def test_as_float_strings_and_arrays():
    np.testing.assert_array_equal(as_float(["1", "", "-2.5"]), [1.0, np.nan, -2.5])
    arr = np.array([1.0, np.nan], dtype=np.float32)
    assert as_float(arr).dtype == np.float64


def _spec():
    return FeatureSpec(
        "toy",
        "label",
        (
            Field("c", "categorical", ("b", "a", ""), (5, 3, 2)),
            Field("n", "numerical", ("1", "", "25")),
            Field("g", "bag", ("x", "y")),
            Field("p", "categorical", (), num_ids=10),
        ),
        min_count=2,
    )


def test_oov_and_ids():
    spec = _spec()
    c, n, g, p = spec.fields
    assert c.encode("b") == 1 and c.encode("a") == 2 and c.encode("") == 3 and c.encode(None) == 3
    assert c.encode("never-seen") == OOV_ID and c.num_embeddings == 4
    assert n.encode("3") == 1 and n.encode("") == 2 and n.encode("150") == 3 and n.encode("-7") == OOV_ID
    assert g.encode(["y", "q", "x"]) == [2, OOV_ID, 1]
    with pytest.raises(FeatureSpecError):
        g.encode("x|y")
    assert p.encode("7") == 7 and p.encode("10") == OOV_ID and p.encode("z") == OOV_ID and p.num_embeddings == 10
    assert spec.numerical == ["n"] and spec.names == ["c", "n", "g", "p"]


def test_json_round_trip(tmp_path):
    spec = _spec()
    spec.save(str(tmp_path / "spec.json"))
    back = FeatureSpec.load(str(tmp_path / "spec.json"))
    assert back == spec and back.field("c").counts == (5, 3, 2) and back.field("p").num_ids == 10
    assert back.field("c").encode("a") == 2  # the token index is rebuilt on load


def test_spec_errors(tmp_path):
    with pytest.raises(FeatureSpecError, match="duplicate"):
        FeatureSpec("d", "y", (Field("a", "bag", ()), Field("a", "bag", ())))
    with pytest.raises(FeatureSpecError, match="kind"):
        Field("a", "dense", ())
    with pytest.raises(FeatureSpecError, match="duplicate tokens"):
        Field("a", "categorical", ("x", "x"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(FeatureSpecError, match="not valid JSON"):
        FeatureSpec.load(str(bad))
    with pytest.raises(FeatureSpecError, match="spec_version"):
        FeatureSpec.from_dict({**_spec().to_dict(), "spec_version": 99})
