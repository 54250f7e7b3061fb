"""`python -m trainer frontier` end to end on configs/tiny/frontier_synthetic.toml.

Every figure must come from the written bundles: the bytes are cross-checked here against
the tensor files inside each bundle's .pt2 archives, independently of serving.bundle.
"""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from torch._export.serde.schema import ScalarType

from serving.features import FeatureSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny" / "frontier_synthetic.toml"
KEYS = {"scheme", "settings", "seed", "test_auc", "test_logloss", "served_bytes", "infer_s_per_10k"}


def frontier(out: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer", "frontier", "--config", str(CONFIG), "--out", str(out),
           f"data.cache_dir={cache}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frontier")
    # the million-id config's model options: every scheme must build with them
    res = frontier(tmp / "run", tmp / "cache", "model.first_order_low=shared", "model.raw_rows=sparse",
                   'frontier.schemes.others.quantize=["int8"]', 'frontier.schemes.lowdim.quantize=["int4"]')
    assert res.returncode == 0, res.stderr[-4000:]
    return tmp / "run", json.loads((tmp / "run" / "frontier.json").read_text())


def archive_bytes(bundle: Path) -> tuple[int, int]:
    """(every stored tensor, the per-id tables' rows): sizes of the tensor files in the
    bundle's program archives, found through each archive's own weights and constants
    indexes. Table rows are the float tables' state entries, or for quantized tables the
    integer constants (FBGEMM's packed rows and their offsets)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {c["model"] for c in manifest["clusters"]} | ({manifest["router"]} if manifest.get("router") else set())
    total = tables = 0
    for name in files:
        with zipfile.ZipFile(bundle / name) as z:
            for kind in ("weights/model_weights_config.json", "constants/model_constants_config.json"):
                index = next((n for n in z.namelist() if n.endswith("data/" + kind)), None)
                if index is None:
                    continue
                folder = index.rsplit("/", 1)[0]
                for tensor, entry in json.loads(z.read(index))["config"].items():
                    size = z.getinfo(f"{folder}/{entry['path_name']}").file_size
                    total += size
                    dtype = ScalarType(entry["tensor_meta"]["dtype"]).name
                    integer = kind.startswith("constants") and dtype not in ("HALF", "FLOAT", "DOUBLE", "BFLOAT16")
                    tables += size if ".embedding_bags." in f".{tensor}" or integer else 0
    return total, tables


def by(points, scheme, **settings):
    return next(p for p in points if p["scheme"] == scheme and all(p["settings"].get(k) == v for k, v in settings.items()))


def test_every_point_has_the_keys_and_its_bundle_bytes(run):
    out, points = run
    schemes = {p["scheme"] for p in points}
    assert schemes == {"fe_fp32", "fe_fp16", "fe_int8", "fe_int4", "dim", "others", "hash", "qr", "lowdim"}
    for p in points:
        assert KEYS <= set(p), p
        assert p["seed"] == 0 and 0.0 <= p["test_auc"] <= 1.0 and p["test_logloss"] > 0 and p["infer_s_per_10k"] > 0
        total, tables = archive_bytes(out / p["bundle"])
        # every tensor the archives store is counted, and the rows are stored once
        assert p["served_bytes"] == total == p["stored_bytes"], p["scheme"]
        assert p["served_table_bytes"] == tables > 0, p["scheme"]
        assert 0 < p["test_rows_low"] < 1 and 0 <= p["test_auc_low"] <= 1  # the rows holding a low-frequency id
        if p["scheme"] != "fe_fp32":  # paired against the same seed's FE fp32: the interval holds the full-rows difference
            d = p["auc_vs_fe_fp32"]
            assert d["lo"] <= d["diff"] <= d["hi"] and d["resamples"] > 150
            assert d["diff"] == pytest.approx(p["test_auc"] - by(points, "fe_fp32")["test_auc"], abs=1e-6)


def test_bytes_order_by_storage(run):
    _, points = run
    fp32, fp16, int8, int4 = (by(points, f"fe_{q}") for q in ("fp32", "fp16", "int8", "int4"))
    for key in ("served_bytes", "served_table_bytes"):
        assert int4[key] <= int8[key] < fp16[key] < fp32[key]
    # FBGEMM's quantized rows: 2 bytes a value (fp16) or 1 byte a value + a 4-byte scale and
    # bias (int8; int4: half a byte a value), each row padded to a multiple of 16 bytes; fp32
    # rows are 4 bytes a value
    tables = json.loads((run[0] / fp32["bundle"] / "manifest.json").read_text())["clusters"][0]["tables"]
    pad = lambda n: -(-n // 16) * 16  # noqa: E731
    assert fp32["served_table_bytes"] == sum(t["num_embeddings"] * 4 * t["dim"] for t in tables)
    # quantized rows live in FBGEMM's packed buffer: each table's start aligned, plus small offset arrays
    rows16 = sum(t["num_embeddings"] * pad(2 * t["dim"]) for t in tables)
    rows8 = sum(t["num_embeddings"] * pad(t["dim"] + 4) for t in tables)
    assert rows16 <= fp16["served_table_bytes"] <= rows16 + 64 * len(tables) + 512
    rows4 = sum(t["num_embeddings"] * pad(-(-t["dim"] // 2) + 4) for t in tables)
    assert rows8 <= int8["served_table_bytes"] <= rows8 + 64 * len(tables) + 512
    assert rows4 <= int4["served_table_bytes"] <= rows4 + 64 * len(tables) + 512
    assert by(points, "hash", buckets=16)["served_bytes"] < by(points, "hash", buckets=64)["served_bytes"] < fp32["served_bytes"]
    for scheme in ("others", "lowdim", "dim", "qr"):
        assert by(points, scheme)["served_bytes"] < fp32["served_bytes"], scheme


def test_tables_have_the_rows_the_scheme_promises(run):
    out, points = run
    spec = FeatureSpec.load(str(out / by(points, "fe_fp32")["bundle"] / "feature_spec.json"))
    for b in (16, 64):
        tables = json.loads((out / by(points, "hash", buckets=b)["bundle"] / "manifest.json").read_text())["clusters"][0]["tables"]
        # one table per field: B rows, or the field's own ids where it has no more than B
        assert sorted(t["feature"] for t in tables) == sorted(spec.names)
        assert all(t["num_embeddings"] == min(b, spec.field(t["feature"]).num_embeddings) for t in tables)
        assert any(t.get("derived", "").endswith(":hash") for t in tables)
    # QR: a field with more than B ids stores ⌈V / B⌉ quotient rows and B remainder rows
    tables = json.loads((out / by(points, "qr", buckets=16)["bundle"] / "manifest.json").read_text())["clusters"][0]["tables"]
    for f in spec.fields:
        mine = sorted((t.get("derived", t["feature"]), t["num_embeddings"]) for t in tables if t["feature"] == f.name)
        v = f.num_embeddings
        assert mine == ([(f"{f.name}:qr_q", -(-v // 16)), (f"{f.name}:qr_r", 16)] if v > 16 else [(f.name, v)]), mine
    # Others: a field with low-frequency ids keeps its frequent rows + one shared row
    others = by(points, "others")
    tables = json.loads((out / others["bundle"] / "manifest.json").read_text())["clusters"][0]["tables"]
    shared = [t for t in tables if t.get("derived", "").endswith(":others")]
    assert shared and all(t["num_embeddings"] < spec.field(t["feature"]).num_embeddings for t in shared)


def test_quantized_tables_keep_the_scores(run):
    _, points = run
    fp32 = by(points, "fe_fp32")["test_auc"]
    # the same trained model: fp16 rounds each table value by <= 2^-11 relative, int8 by <= 1/255
    # of a row's range; either moves a probability by ~1e-3 at most on these tiny tables, which
    # can swap only near-tied pairs (on ML-100K the shift measured 3e-6 AUC)
    assert abs(by(points, "fe_fp16")["test_auc"] - fp32) < 2e-3
    assert abs(by(points, "fe_int8")["test_auc"] - fp32) < 5e-3
    # a scheme's extra storages are the same trained model with its tables quantized at export
    for scheme, q in (("others", "int8"), ("lowdim", "int4")):
        plain = next(p for p in points if p["scheme"] == scheme and "quantize" not in p["settings"])
        stored = by(points, scheme, quantize=q)
        assert stored["label"] == f"{plain['label']} {q}" and stored["served_bytes"] < plain["served_bytes"]
        assert abs(stored["test_auc"] - plain["test_auc"]) < 5e-3


def test_frontier_files(run):
    out, points = run
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on = [p for p in points if p["on_frontier"]]
    assert on
    for p in on:  # no point beats a frontier point on both axes
        assert not any(q["served_bytes"] <= p["served_bytes"] and q["test_auc"] > p["test_auc"] for q in points)
    assert "| scheme |" in (out / "frontier.md").read_text()
    # the machine a run needs: its wall time and peak resident set, in the run's log
    assert re.search(r"\(\d+\.\d min, peak RSS \d+\.\d\d GiB\)", (out / "run.log").read_text())


def test_bad_config_is_one_error_and_exit_2(tmp_path):
    res = frontier(tmp_path / "bad", tmp_path / "cache", "frontier.schemes.hash.buckets=[0]")
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "frontier.schemes.hash.buckets" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "bad").exists()


def test_autodpq_settings_are_checked_by_autodpq_itself():
    """The AutoDPQ scheme's [search] keys are typed and cross-checked by the method's own rules, at load."""
    from trainer.config import ConfigError
    from trainer.frontier.job import load_experiment

    config = str(ROOT / "configs" / "frontier_ml100k.toml")
    exp = load_experiment(config, [])
    assert exp.frontier.scheme_configs["autodpq"].baselines == ["grid", "random"]
    with pytest.raises(ConfigError) as e:
        load_experiment(config, ["frontier.schemes.autodpq.search.threshold=5", "frontier.schemes.autodpq.baselines=[\"others\"]"])
    assert "search.threshold: set by the frontier" in str(e.value) and "['others']" in str(e.value)
    with pytest.raises(ConfigError) as e:  # AutoDPQ's own cross-section rule: every D divides the dim
        load_experiment(config, ["frontier.schemes.autodpq.search.ds=[3]"])
    assert "D=3 vs dim 16" in str(e.value)


def test_byte_aware_autodpq_points_are_served_bundles(tmp_path):
    """Only the AutoDPQ scheme (the holdout schedule), with one byte-aware λ and int8 tables:
    AutoDPQ and the λ row, each also with its tables quantized, are points whose bytes are
    their bundles' tensors, and the λ point says which storage each coded field took."""
    schemes = ('frontier.schemes={autodpq={baselines=[], size_weights=[2.0], quantize=["int8"], '
               'search={ks=[2, 4], ds=[2, 4], search_epochs=1, arch_every=2, arch_lr=0.01, arch_split="gate", holdout=true}}}')
    res = frontier(tmp_path / "run", tmp_path / "cache", schemes)
    assert res.returncode == 0, res.stderr[-4000:]
    points = json.loads((tmp_path / "run" / "frontier.json").read_text())
    assert sorted(p["scheme"] for p in points) == ["autodpq", "autodpq", "autodpq_bytes", "autodpq_bytes"]
    for p in points:
        assert KEYS <= set(p) and p["served_bytes"] == archive_bytes(tmp_path / "run" / p["bundle"])[0]
    for scheme in ("autodpq", "autodpq_bytes"):
        plain = next(p for p in points if p["scheme"] == scheme and "quantize" not in p["settings"])
        assert by(points, scheme, quantize="int8")["served_bytes"] < plain["served_bytes"]
    lam = next(p for p in points if p["scheme"] == "autodpq_bytes" and "quantize" not in p["settings"])
    assert lam["settings"]["size_weight"] == 2.0 and lam["label"] == "λ=2"
    kinds = {v if not v.startswith("K") else "dpq" for v in lam["settings"]["chosen"].values()}
    assert lam["settings"]["chosen"] and kinds <= {"full", "others", "int8", "int4", "dpq"}


def test_autodim_and_ihas2_dims_are_served_bundles(tmp_path):
    """The AutoDim scheme: AutoDim's and iHAS-2's dims as points whose bytes are their bundles'
    tensors, every field at one of the candidate dims (iHAS-2: at most the model's dim)."""
    schemes = ('frontier.schemes={autodim={ihas_2=true, ihas={pretrain_epochs=1, search_epochs=1}, '
               'search={candidates=[2, 4, 8], search_epochs=1, arch_every=1, arch_lr=0.1}}}')
    res = frontier(tmp_path / "run", tmp_path / "cache", schemes)
    assert res.returncode == 0, res.stderr[-4000:]
    points = json.loads((tmp_path / "run" / "frontier.json").read_text())
    assert sorted(p["scheme"] for p in points) == ["autodim", "ihas_2"]
    for p in points:
        assert KEYS <= set(p) and p["served_bytes"] == archive_bytes(tmp_path / "run" / p["bundle"])[0]
    assert set(by(points, "autodim")["settings"]["dims"].values()) <= {2, 4, 8}
    assert max(by(points, "ihas_2")["settings"]["dims"].values()) <= 8
