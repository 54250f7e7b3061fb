"""Per-field numerical encodings (log / quantile / raw): fitted on train only, carried by
the spec, applied by the server exactly as the cache applied them."""

import math

import numpy as np
import pytest

from serving.encode import Column, Encoder
from serving.encodings import DEFAULT_BINS, LOG, MAX_BINS, Encoding
from serving.features import FeatureSpec, FeatureSpecError, Field, bucket_token
from trainer.config import ConfigError
from trainer.data.config import DataConfig, dense_input_problems, load_dataset, make_reader
from trainer.data.fitting import TrainValues, quantile_edges
from trainer.data.numerical import bin_codes, bucket_tokens
from trainer.data.readers.base import DataError, FieldDecl
from trainer.jobs.train import load_experiment
from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig

QUIET = {"log": lambda _: None}


def _write(path, n=400, x_of=None):
    """A CSV with label y, a categorical c and numerical x, p (x missing every 9th row)."""
    rng = np.random.default_rng(1)
    xs = np.round(np.exp(rng.uniform(0, 5, n)), 1)
    lines = ["y,c,x,p"]
    raw = []
    for i in range(n):
        x = "" if i % 9 == 0 else repr(float(xs[i] if x_of is None else x_of(i, xs[i])))
        raw.append(x)
        lines.append(f"{i % 2},c{i % 5},{x},{i % 4}")
    path.write_text("\n".join(lines) + "\n")
    return raw


def _cfg(tmp_path, numerical, path=None, **kw):
    return DataConfig(
        source="table", path=str(path or tmp_path / "t.csv"), label="y",
        fields={"c": "categorical", "x": "numerical", "p": "numerical"}, numerical=numerical,
        cache_dir=str(tmp_path / "cache"), **kw,
    )  # fmt: skip


def _floats(raw):
    return np.array([float(v) if v else np.nan for v in raw])


def test_log_is_the_default_and_unchanged(tmp_path):
    raw = _write(tmp_path / "t.csv")
    ds = load_dataset(_cfg(tmp_path, {}), **QUIET)
    f = ds.spec.field("x")
    assert f.encoding == LOG and ds.spec.to_dict()["spec_version"] == 1  # old servers still read it
    assert [ds.ids["x"][i] for i in range(len(raw))] == [f.token_id(bucket_token(v)) for v in raw]
    explicit = load_dataset(_cfg(tmp_path, {"x": "log"}), **QUIET)
    assert explicit.path == ds.path  # "log" named or not: the same cache


def test_quantile_edges_are_fitted_on_train_rows_only(tmp_path):
    raw = _write(tmp_path / "t.csv")
    ds = load_dataset(_cfg(tmp_path, {"x": "quantile:8"}), **QUIET)
    enc = ds.spec.field("x").encoding
    train = _floats(raw)[ds.indices("train")]
    train = np.sort(train[~np.isnan(train)])
    want = np.unique(train[np.arange(1, 8) * len(train) // 8])
    assert enc.name == "quantile" and enc.bins == 8 and enc.edges == tuple(want[want > train[0]].tolist())
    counts = np.bincount(np.searchsorted(enc.edges, train, side="right"))
    assert counts.min() > 0.6 * len(train) / 8  # about equal-count bins
    f = ds.spec.field("x")
    assert [int(ds.ids["x"][i]) for i in range(len(raw))] == [f.encode(v) for v in raw]
    assert f.encode("") != f.encode("1.0") and f.encode("") > 0  # missing has its own id
    # huge values outside the train split move no edge
    split = ds.split
    other = tmp_path / "other.csv"
    _write(other, x_of=lambda i, x: 1e9 if split[i] else x)
    shifted = load_dataset(_cfg(tmp_path, {"x": "quantile:8"}, path=other), **QUIET)
    assert np.array_equal(shifted.split, split) and shifted.spec.field("x").encoding.edges == enc.edges


def test_raw_is_standardised_with_train_moments_and_its_token_marks_missing(tmp_path):
    raw = _write(tmp_path / "t.csv")
    ds = load_dataset(_cfg(tmp_path, {"x": "raw"}), **QUIET)
    enc = ds.spec.field("x").encoding
    x = _floats(raw)
    train = x[ds.indices("train")]
    train = train[~np.isnan(train)]
    assert enc.mean == pytest.approx(train.mean(), rel=1e-12) and enc.std == pytest.approx(train.std(), rel=1e-12)
    j = ds.spec.numerical.index("x")
    want = np.where(np.isnan(x), 0.0, (x - enc.mean) / enc.std).astype(np.float32)
    assert np.array_equal(ds.dense[:, j], want)
    f = ds.spec.field("x")
    assert set(f.vocab) == {"", "0"} and ds.ids["x"][0] == f.token_id("") and ds.ids["x"][1] == f.token_id("0")
    assert ds.dense[:, ds.spec.numerical.index("p")].tolist() == pytest.approx([math.log1p(i % 4) for i in range(400)])


def test_autodis_tokens_are_criteo_buckets_and_its_dense_input_keeps_missing_as_nan(tmp_path):
    raw = _write(tmp_path / "t.csv")
    ds = load_dataset(_cfg(tmp_path, {"x": "autodis"}), **QUIET)
    log = load_dataset(_cfg(tmp_path, {}), **QUIET)
    f = ds.spec.field("x")
    assert f.vocab == log.spec.field("x").vocab and np.array_equal(ds.ids["x"], log.ids["x"])  # the bucketized row's cache
    enc = f.encoding
    x = _floats(raw)
    s = np.sign(x) * np.log1p(np.abs(x))
    train = s[ds.indices("train")]
    train = train[~np.isnan(train)]
    assert enc.name == "autodis" and enc.mean == pytest.approx(train.mean(), rel=1e-12) and enc.std == pytest.approx(train.std(), rel=1e-12)
    want = ((s - enc.mean) / enc.std).astype(np.float32)
    assert np.array_equal(ds.dense[:, ds.spec.numerical.index("x")], want, equal_nan=True) and np.isnan(want[0])
    assert Encoding.from_dict(enc.to_dict()) == enc and str(Encoding.parse("autodis")) == "autodis"


@pytest.mark.parametrize("encoding", ["quantile:8", "raw", "log", "autodis"])
def test_served_encoding_equals_training_encoding(tmp_path, encoding):
    raw = _write(tmp_path / "t.csv")
    ds = load_dataset(_cfg(tmp_path, {"x": encoding, "p": "quantile:3"}), **QUIET)
    spec = FeatureSpec.load(str(ds.path / "spec.json"))  # what a bundle carries
    enc = Encoder(spec)
    rows = [{"c": f"c{i % 5}", "x": float(v) if v else "", "p": i % 4} for i, v in enumerate(raw)]
    by_rows = enc.encode_rows(rows)
    n = len(raw)
    by_columns = enc.encode_columns(n, {"c": Column(tokens=[r["c"] for r in rows]),
                                        "x": Column(tokens=raw), "p": Column(numbers=[i % 4 for i in range(n)])})
    for batch in (by_rows, by_columns):
        assert batch.ids[spec.names.index("x")].tolist() == ds.ids["x"].tolist()
        assert batch.ids[spec.names.index("p")].tolist() == ds.ids["p"].tolist()
        assert np.array_equal(batch.dense, ds.dense, equal_nan=True)  # bit for bit (NaN: a missing autodis value)


def test_the_cache_fingerprint_follows_the_encoding(tmp_path):
    _write(tmp_path / "t.csv")
    prints = {e: make_reader(_cfg(tmp_path, {"x": e})).fingerprint() for e in ("log", "quantile:8", "quantile:4", "raw")}
    assert len(set(prints.values())) == 4 and prints["log"] == make_reader(_cfg(tmp_path, {})).fingerprint()
    assert make_reader(_cfg(tmp_path, {"*": "raw"})).fingerprint() == make_reader(_cfg(tmp_path, {"x": "raw", "p": "raw"})).fingerprint()
    paths = {load_dataset(_cfg(tmp_path, {"x": e}), **QUIET).path for e in ("quantile:8", "quantile:4", "raw")}
    assert len(paths) == 3


def test_every_field_key_and_other_sources(tmp_path):
    cfg = DataConfig(source="synthetic", rows=2000, n_categorical=2, n_numerical=3, signal_fields_per_group=1,
                     numerical={"*": "quantile:4", "I2": "raw"}, cache_dir=str(tmp_path))
    ds = load_dataset(cfg, **QUIET)
    assert [ds.spec.field(n).encoding.name for n in ("I1", "I2", "I3")] == ["quantile", "raw", "quantile"]
    assert ds.meta["numerical"] == {"I1": "quantile:4", "I2": "raw", "I3": "quantile:4"}
    with pytest.raises(ValueError, match=r"data.numerical: \['I99'\] are not numerical fields"):
        make_reader(DataConfig(source="synthetic", numerical={"I99": "raw"}))
    with pytest.raises(ValueError, match="numerical fields: none"):
        make_reader(DataConfig(source="movielens100k", numerical={"age": "raw"}))


@pytest.mark.parametrize(
    "numerical, problem",
    [
        ({"x": "cubic"}, "data.numerical.x: numerical encoding 'cubic' is not one of"),
        ({"x": "quantile:1"}, "data.numerical.x: numerical encoding 'quantile:1': bins must be in [2, 65536], got 1"),
        ({"x": f"quantile:{MAX_BINS + 1}"}, "bins must be in"),
        ({"x": "quantile:many"}, "the bin count must be an integer"),
        ({"x": "raw:2"}, "is not one of log, quantile, quantile:N, raw"),
        ({"c": "quantile"}, "data.numerical.c: only numerical fields have an encoding"),
        ({"zz": "raw"}, "data.numerical.zz: not in data.fields"),
        ({"a b": "raw"}, "data.numerical.a b: not a field name"),
    ],
)
def test_config_errors(tmp_path, numerical, problem):
    problems = _cfg(tmp_path, numerical).validate()
    assert any(problem in p for p in problems), problems


def test_raw_needs_the_dense_input(tmp_path):
    raw_cfg = _cfg(tmp_path, {"x": "raw"})
    assert dense_input_problems(raw_cfg, ModelConfig().reads_dense)
    assert not dense_input_problems(raw_cfg, ModelConfig(dense_input=True).reads_dense)
    assert not dense_input_problems(raw_cfg, ModelConfig(name="dlrm").reads_dense)
    toml = tmp_path / "e.toml"
    toml.write_text('[data]\nsource = "synthetic"\nnumerical = { I1 = "raw" }\n[model]\nname = "deepfm"\n')
    with pytest.raises(ConfigError, match="model.dense_input = true"):
        load_experiment(str(toml), [])
    spec = FeatureSpec("d", "y", (Field("x", "numerical", ("", "0"), encoding=Encoding("raw", mean=1.0, std=2.0)),))
    with pytest.raises(ValueError, match="encoded 'raw'"):
        build_model(spec, ModelConfig(mlp=[4]))
    assert build_model(spec, ModelConfig(mlp=[4], dense_input=True)).n_dense == 1


def test_a_bad_value_in_an_encoded_field_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("y,c,x,p\n1,a,3,1\n0,b,seven,2\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'x': 'seven' is not a finite number"):
        load_dataset(_cfg(tmp_path, {"x": "quantile:4"}, path=path), **QUIET)


def test_encoding_parse_round_trip_and_validation():
    assert Encoding.parse("quantile") == Encoding("quantile", DEFAULT_BINS)
    assert str(Encoding.parse("quantile:8")) == "quantile:8" and Encoding.parse("raw").name == "raw"
    fitted = Encoding("quantile", 4, (0.5, 2.0, 7.25))
    assert Encoding.from_dict(fitted.to_dict()) == fitted
    assert [fitted.token(v) for v in ("", None, 0.1, 0.5, 1, 2.0, 100)] == ["", "", "0", "1", "1", "2", "3"]
    with pytest.raises(FeatureSpecError, match="not finite"):
        fitted.token("nan")
    for bad in [dict(name="quantile", bins=2, edges=(1.0, 2.0)), dict(name="quantile", bins=4, edges=(2.0, 1.0)),
                dict(name="raw", std=0.0), dict(name="log", bins=3), dict(name="log", mean=1.0)]:  # fmt: skip
        with pytest.raises(FeatureSpecError):
            Encoding(**bad)
    with pytest.raises(FeatureSpecError, match="only numerical fields"):
        Field("c", "categorical", (), encoding=fitted)
    with pytest.raises(ValueError, match="only numerical fields"):
        FieldDecl("c", "categorical", encoding=fitted)


def test_spec_with_encodings_round_trips_as_version_2(tmp_path):
    spec = FeatureSpec("d", "y", (Field("x", "numerical", ("1", "0"), encoding=Encoding("quantile", 4, (0.1, 3.0))),
                                  Field("r", "numerical", ("0",), encoding=Encoding("raw", mean=0.1, std=3.0)),
                                  Field("l", "numerical", ("5",))))  # fmt: skip
    assert spec.to_dict()["spec_version"] == 2
    spec.save(str(tmp_path / "s.json"))
    back = FeatureSpec.load(str(tmp_path / "s.json"))
    assert back == spec and back.field("x").encode(1.0) == 1 and back.field("x").encode(0.0) == 2 and back.field("l").encoding == LOG


def test_vectorised_bins_match_the_token_rule_exactly():
    rng = np.random.default_rng(0)
    edges = tuple(np.sort(np.unique(rng.normal(0, 10, 30))).tolist())
    e = np.array(edges)
    x = np.concatenate([rng.normal(0, 20, 2000), e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf), [np.nan, -0.0]])
    enc = Encoding("quantile", 64, edges)
    assert bucket_tokens(bin_codes(x, edges)) == [enc.token(None if np.isnan(v) else float(v)) for v in x]


def test_quantile_fit_is_exact_whatever_the_chunking():
    rng = np.random.default_rng(0)
    x = np.round(rng.exponential(3, 5000), 1)
    x[::11] = np.nan
    whole = TrainValues(Encoding("quantile", 10))
    whole.add(x)
    pieces = TrainValues(Encoding("quantile", 10))
    pieces.MERGE_AT = 50  # force many merges
    for part in np.array_split(x, 37):
        pieces.add(part)
    assert pieces.fit() == whole.fit() and pieces.code_counts(whole.fit()) == whole.code_counts(whole.fit())
    present = np.sort(x[~np.isnan(x)])
    assert whole.fit().edges == quantile_edges(*np.unique(present, return_counts=True), 10)
    assert sum(whole.code_counts(whole.fit()).values()) == len(x)
    # ties merge bins: 70% zeros leave no edge at or below 0
    assert quantile_edges(np.array([0.0, 1.0, 2.0, 3.0]), np.array([7, 1, 1, 1]), 4) == (1.0,)
    assert quantile_edges(np.array([]), np.array([], dtype=np.int64), 4) == ()


def test_criteo_files_take_the_autodis_encoding(tmp_path, fixtures):
    cfg = dict(source="criteo", path=str(fixtures / "criteo_small.tsv"), min_count=1, cache_dir=str(tmp_path))
    auto = load_dataset(DataConfig(**cfg, numerical={"*": "autodis"}), **QUIET)
    log = load_dataset(DataConfig(**cfg), **QUIET)
    assert {auto.spec.field(n).encoding.name for n in auto.spec.numerical} == {"autodis"} and len(auto.spec.numerical) == 13
    assert all(np.array_equal(auto.ids[n], log.ids[n]) for n in auto.spec.numerical)  # tokens: the Criteo buckets
    assert np.isnan(auto.dense).any() and not np.isnan(log.dense).any()  # empty cells: missing, NaN for AutoDis
