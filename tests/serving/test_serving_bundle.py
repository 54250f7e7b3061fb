"""Bundle round trip, integrity checks and the no-unpickling guarantee."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from serving_fixtures import DIMS, TinyCTR, in_memory_scores, random_rows

from serving import wire
from serving.bundle import MANIFEST, SCHEMA_VERSION, BundleError, load_bundle, read_manifest, write_bundle
from serving.bundle.manifest import _sha256
from serving.encode import Encoder
from serving.features import FeatureSpec, Field
from serving.predictor import Predictor


def test_round_trip_reproduces_in_memory_predictions(spec, models, bundle):
    cluster_models, router = models
    rows = random_rows(spec, 1000, seed=7)
    want_p, want_c = in_memory_scores(spec, cluster_models, router, rows)
    got = Predictor(bundle).predict_rows(rows)
    assert np.array_equal(got.clusters, want_c)
    assert len(set(want_c.tolist())) == 2  # both clusters really exercised
    assert float(np.max(np.abs(got.probabilities - want_p))) < 1e-6
    assert got.version == "toy-v1"


def test_manifest_describes_the_bundle(bundle_dir, spec):
    m = read_manifest(bundle_dir)
    assert m.schema_version == SCHEMA_VERSION and m.bundle_version == "toy-v1" and m.dataset == spec.dataset
    assert m.router == "router.pt2" and [c.model for c in m.clusters] == ["cluster_0.pt2", "cluster_1.pt2"]
    assert [c.dims for c in m.clusters] == DIMS
    assert m.metrics == {"auc": 0.5} and m.metadata == {"method": "stand-in"}
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in Path(bundle_dir).rglob("*") if p.is_file()} - {MANIFEST}
    assert set(m.files) == on_disk
    for name, entry in m.files.items():
        assert entry.sha256 == _sha256(Path(bundle_dir) / name) and entry.bytes == (Path(bundle_dir) / name).stat().st_size
    assert not list(Path(bundle_dir).parent.glob(".*tmp-*"))  # the temp dir was renamed, not left behind


@pytest.fixture
def copy(bundle_dir, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    return dst


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / MANIFEST
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def test_bad_hash_refused(copy):
    path = copy / "cluster_1.pt2"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"cluster_1\.pt2: sha256 .* does not match"):
        load_bundle(copy)


def test_truncated_file_refused(copy):
    path = copy / "router.pt2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"router\.pt2: 1000 bytes but the manifest says \d+ \(truncated"):
        load_bundle(copy)


def test_missing_cluster_model_refused(copy):
    (copy / "cluster_1.pt2").unlink()
    with pytest.raises(BundleError, match=r"cluster_1\.pt2: missing \(cluster 1 model\)"):
        load_bundle(copy)


def test_cluster_dropped_from_manifest_refused(copy):
    edit_manifest(copy, lambda d: d["clusters"].pop())
    with pytest.raises(BundleError, match="outputs of 2 cluster models, the manifest lists 1"):
        load_bundle(copy)


def test_unlisted_file_refused(copy):
    edit_manifest(copy, lambda d: d["files"].pop("cluster_0.pt2"))
    with pytest.raises(BundleError, match=r"manifest.json: cluster 0 model file 'cluster_0.pt2' is not in the files list"):
        load_bundle(copy)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", None])
def test_wrong_schema_version_refused(copy, version):
    edit_manifest(copy, lambda d: d.update(schema_version=version))
    with pytest.raises(BundleError, match=r"manifest.json: schema_version .* is not supported"):
        load_bundle(copy)


def test_other_dataset_refused(copy, spec):
    assert load_bundle(copy, dataset=spec.dataset, verify_outputs=False).version == "toy-v1"
    with pytest.raises(BundleError, match="bundle is for dataset 'toy-serving', expected 'criteo'"):
        load_bundle(copy, dataset="criteo")


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda d: d.pop("files"), "files must be a dict"),
        (lambda d: d.update(format="something"), "not an embstack bundle"),
        (lambda d: d["files"].update({"../etc/passwd": {"sha256": "0", "bytes": 1}}), "points outside the bundle"),
        (lambda d: d.update(router=None), "2 clusters but no router"),
    ],
)
def test_malformed_manifest_refused(copy, change, words):
    edit_manifest(copy, change)
    with pytest.raises(BundleError, match=words):
        load_bundle(copy)


def test_unreadable_manifest_refused(copy, tmp_path):
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: unreadable"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="missing; .* is not a bundle directory"):
        load_bundle(tmp_path / "nothing-here")


class Payload:
    """Unpickling this creates a marker file: proof that code ran on load."""

    marker: Path

    def __reduce__(self):
        return Path.touch, (self.marker,)


def rewrite_member(bundle: Path, file: str, suffix: str, edit) -> None:
    """Replaces the archive member ending in `suffix` with edit(bytes), then rewrites the
    manifest's hash and size: an attacker who can write the bundle can do as much."""
    path = bundle / file
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, edit(data) if item.filename.endswith(suffix) else data)
    edit_manifest(bundle, lambda d: d["files"][file].update(sha256=_sha256(path), bytes=path.stat().st_size))


def test_loading_never_unpickles_code(copy, tmp_path):
    """torch.export.load falls back to a full unpickle for pickled payloads."""
    Payload.marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    torch.save((Payload(),), buf)
    rewrite_member(copy, "cluster_0.pt2", "sample_inputs/model.pt", lambda _: buf.getvalue())
    with pytest.raises(BundleError, match=r"cluster_0\.pt2: refused, .*pickled payload"):
        load_bundle(copy)
    assert not Payload.marker.exists()


def test_loading_never_evaluates_archive_expressions(copy, tmp_path):
    """torch.export.load parses shape expressions with sympy.sympify (an eval): a
    crafted one runs code even with weights-only unpickling. The audit refuses it."""
    marker = tmp_path / "code-ran"
    symbol = b"Symbol('s37', positive=True, integer=True)"
    evil = f"Symbol(__import__('pathlib').Path('{marker}').touch() or 's37', positive=True, integer=True)".encode()
    rewrite_member(copy, "router.pt2", "models/model.json", lambda data: data.replace(symbol, evil, 1) if symbol in data else data + b"!")
    with pytest.raises(BundleError, match=r"router\.pt2: refused, .*disallowed"):
        load_bundle(copy)
    assert not marker.exists()


def test_write_refuses_existing_dir_and_bad_models(tmp_path, spec, models, bundle_dir):
    cluster_models, router = models
    example = Encoder(spec).encode_rows(random_rows(spec, 8, seed=2)).to_inputs(spec.names)
    kw = dict(spec=spec, example=example, version="v")
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundle_dir, cluster_models=cluster_models, router=router, **kw)
    with pytest.raises(BundleError, match="2 cluster models need a router"):
        write_bundle(tmp_path / "b", cluster_models=cluster_models, router=None, **kw)
    with pytest.raises(BundleError, match="router must return integer cluster ids"):
        write_bundle(tmp_path / "b", cluster_models=cluster_models, router=cluster_models[0], **kw)
    small_vocab = FeatureSpec(spec.dataset, "label", (Field("user", "categorical", ("a", "b")),))
    small = TinyCTR(small_vocab, {"user": 4})  # its table has 3 rows; the bundle's spec has 31 user ids
    with pytest.raises(BundleError, match="table 't_user' has 3 rows but field 'user' has ids up to 30"):
        write_bundle(tmp_path / "b", cluster_models=[small], router=None, **kw)
    one_row = Encoder(spec).encode_rows(random_rows(spec, 1, seed=2)).to_inputs(spec.names)
    with pytest.raises(BundleError, match="at least 2 rows"):
        write_bundle(tmp_path / "b", cluster_models=cluster_models[:1], router=None, spec=spec, example=one_row, version="v")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".*tmp-*"))


def test_single_cluster_bundle_without_router(tmp_path, spec, models):
    model = models[0][1]
    rows = random_rows(spec, 200, seed=11)
    out = write_bundle(
        tmp_path / "plain", spec=spec, cluster_models=[model], router=None, version="plain-1",
        example=Encoder(spec).encode_rows(rows[:16]).to_inputs(spec.names),
    )
    bundle = load_bundle(out)
    assert bundle.manifest.router is None and bundle.num_clusters == 1
    assert bundle.dims == [{"user": 4, "item": 16, "age": 0, "genres": 4, "city": 8}]  # stored table widths
    got = Predictor(bundle).predict_rows(rows)
    inputs = Encoder(spec).encode_rows(rows).to_inputs(spec.names)
    with torch.no_grad():
        want = torch.sigmoid(model(*inputs)).numpy()
    assert (got.clusters == 0).all() and float(np.max(np.abs(got.probabilities - want))) < 1e-6


@pytest.mark.parametrize("dims", [{}, {"user": 4, "age": 0, "genres": 8}], ids=["uniform", "mixed"])
def test_first_order_column_model_serves_its_offline_scores(dims, tmp_path, spec):
    from trainer.models.build import build_model
    from trainer.models.ctr import ModelConfig

    torch.manual_seed(3)
    cfg = ModelConfig(name="deepfm", embedding_dim=8, dims=dims, mlp=[16], first_order_column=True, init_scale=0.3)
    model = build_model(spec, cfg).eval()
    with torch.no_grad():  # non-zero first-order weights, so the term is really served
        for t in model.embeddings.ebc.embedding_bags.values():
            t.weight.normal_(0, 0.3)
    rows = random_rows(spec, 300, seed=5)
    out = write_bundle(tmp_path / "fo", spec=spec, cluster_models=[model], router=None, version="fo-1",
                       example=Encoder(spec).encode_rows(rows[:16]).to_inputs(spec.names))
    got = Predictor(load_bundle(out)).predict_rows(rows)
    with torch.no_grad():
        want = torch.sigmoid(model(*Encoder(spec).encode_rows(rows).to_inputs(spec.names))).numpy()
    assert float(np.max(np.abs(got.probabilities - want))) < 1e-6


@pytest.mark.parametrize("kind", ["int8", "fp16", "int4"])
def test_quantized_bundle_routes_identically_and_scores_close(kind, tmp_path, spec, models, bundle):
    cluster_models, router = models
    rows = random_rows(spec, 500, seed=13)
    example = Encoder(spec).encode_rows(rows[:32]).to_inputs(spec.names)
    out = write_bundle(tmp_path / kind, spec=spec, cluster_models=cluster_models, router=router, example=example,
                       version=f"toy-{kind}", dims=DIMS, quantize=kind)
    quantized = load_bundle(out)
    assert quantized.manifest.quantization == kind and bundle.manifest.quantization == "none"
    assert quantized.dims == DIMS  # recorded from the float tables
    report = quantized.metrics["quantization"]
    assert report["dtype"] == kind and report["rows"] == 32 and 0 < report["max_abs_prob_change"] < 1e-2
    got, want = Predictor(quantized).predict_rows(rows), Predictor(bundle).predict_rows(rows)
    assert np.array_equal(got.clusters, want.clusters)  # the router stays float32
    change = np.abs(got.probabilities - want.probabilities)
    assert 0 < float(change.max()) < 1e-2
    assert wire.model_info(quantized, 64).quantization == kind
    for p in cluster_models + [router]:  # the caller's models are left float
        assert not any(type(m).__module__.startswith("torchrec.quant") for m in p.modules())
    with pytest.raises(BundleError, match="quantize 'int3'"):
        write_bundle(tmp_path / "x", spec=spec, cluster_models=cluster_models, router=router, example=example, version="x", quantize="int3")


def test_manifest_without_quantization_reads_as_float(copy):
    edit_manifest(copy, lambda d: d.pop("quantization"))
    assert read_manifest(copy).quantization == "none"
    edit_manifest(copy, lambda d: d.update(quantization="int2"))
    with pytest.raises(BundleError, match="quantization 'int2'"):
        read_manifest(copy)


def rewrite_golden(bundle_dir: Path, role: str, array: np.ndarray) -> None:
    """Replaces a golden array and re-hashes it: integrity checks pass, content is hostile."""
    name = f"golden/{role}.npy"
    np.save(bundle_dir / name, array, allow_pickle=False)
    entry = {"sha256": _sha256(bundle_dir / name), "bytes": (bundle_dir / name).stat().st_size}
    edit_manifest(bundle_dir, lambda d: d["files"].update({name: entry}))


@pytest.mark.parametrize("role, change, words", [
    ("lengths", lambda a: a + 1, "golden rows do not match"),  # lengths no longer sum to the values
    ("lengths", lambda a: -a, "golden rows do not match"),
    ("values", lambda a: a + 10_000, "golden ids of field"),  # ids past the tables
    ("values", lambda a: a[: len(a) // 2], "golden rows do not match"),
    ("clusters", lambda a: a[:-1], "golden outputs have shapes"),
])
def test_hostile_golden_rows_are_refused_before_any_program_runs(copy, role, change, words):
    rewrite_golden(copy, role, change(np.load(copy / f"golden/{role}.npy")))
    with pytest.raises(BundleError, match=words):
        load_bundle(copy)


def test_programs_run_without_torch_runtime_checks_but_batches_are_checked(bundle_dir, bundle, spec):
    # the programs as torch.export.load gives them carry the checks: what the loader removes
    with zipfile.ZipFile(bundle_dir / "cluster_0.pt2") as z:
        assert any(b"_assert_scalar" in z.read(n) for n in z.namelist() if n.endswith(".json"))
    for program in (bundle.router, *bundle.models):
        assert not [h for h in program._forward_pre_hooks.values() if "input_constraints" in getattr(h, "__name__", "")]
        assert not [n for n in program.graph.nodes if "_assert_" in str(n.target)]
    batch = Encoder(spec).encode_rows(random_rows(spec, 4, seed=1))
    bag = spec.names.index("genres")
    lengths = list(batch.lengths)
    lengths[bag] = batch.lengths[bag] + 1
    broken = type(batch)(batch.dense, batch.ids, tuple(lengths))
    with pytest.raises(ValueError, match="bag lengths"):
        broken.to_inputs(spec.names)
    short = type(batch)(batch.dense, tuple(ids[:2] if lens is None else ids for ids, lens in zip(batch.ids, batch.lengths)), batch.lengths)
    with pytest.raises(ValueError, match="2 ids for 4 rows"):
        short.to_inputs(spec.names)
