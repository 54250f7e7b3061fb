"""AutoDis through the recipe on tiny synthetic data: its rows, and its bundle served from raw values."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.bundle import load_bundle
from serving.encode import Encoder
from serving.config import ServerConfig
from serving.server import start_app
from trainer.config import ConfigError
from trainer.decisions import Decisions
from trainer.jobs.search import load_experiment
from trainer.models.build import build_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "autodis_synthetic.toml"
ROWS = {"base", "autodis_weighted", "autodis_max", "autodis_topk", "autodis_weighted_leaky_skip", "scalar"}
# a served probability vs the same float32 model run offline: only batch-shape rounding (~1e-7)
SERVED_TOL = 1e-6


def _value(v):
    return pb.Value(token=v) if isinstance(v, str) else pb.Value(id=v) if isinstance(v, int) else pb.Value(number=v)


def _request(rows):
    return pb.ScoreRequest(rows=[pb.Row(fields={k: _value(v) for k, v in r.items()}) for r in rows])


@pytest.fixture(scope="module")
def served(tiny_run):
    _, _, out, report = tiny_run("autodis_synthetic")
    app = start_app(out / "bundle", "127.0.0.1:0", ServerConfig(max_workers=2))
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    yield out, report, load_bundle(out / "bundle").spec, pb_grpc.InferenceStub(channel)
    channel.close()
    app.stop(None).wait(10)


def _offline(out, spec, rows) -> np.ndarray:
    """The method's trained model, rebuilt from the decisions, on the rows encoded as the server encodes them."""
    decisions = Decisions.from_json(json.loads((out / "decisions.json").read_text()))
    model = build_model(spec, load_experiment(str(CONFIG), []).model, cluster=decisions.clusters[0],
                        numerical=decisions.embedded_numerical, autodis=decisions.autodis)
    model.load_state_dict(torch.load(out / "rows" / "autodis_weighted" / "cluster_0" / "model.pt", weights_only=True))
    with torch.no_grad():
        return torch.sigmoid(model.eval()(*Encoder(spec).encode_rows(rows).to_inputs(spec.names))).numpy()


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        r = {f"C{j}": int(rng.integers(1, 5)) for j in range(1, 5)}
        # raw numbers of every size, and every 4th value missing (the empty token)
        r |= {f"I{j}": "" if (i + j) % 4 == 0 else float(np.round(rng.pareto(1.0) * 10, 2)) for j in range(1, 4)}
        rows.append(r)
    return rows


def test_rows_and_decisions(served):
    out, report, spec, _ = served
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == ROWS and rows["autodis_weighted"]["kind"] == "method" and report["search"]["seconds"] == 0.0
    d = Decisions.from_json(json.loads((out / "decisions.json").read_text()))
    assert d.numerical == {"I1": "autodis", "I2": "autodis", "I3": "autodis"} and d.autodis.aggregation == "weighted"
    assert [spec.field(n).encoding.name for n in ("I1", "I2", "I3")] == ["autodis"] * 3
    # the embedded fields have no tables: fewer table parameters than the bucketized Base
    assert rows["autodis_weighted"]["embedding_params"] < rows["base"]["embedding_params"]


def test_server_scores_raw_values_as_offline_with_missing_as_documented(served):
    out, _, spec, stub = served
    rows = _rows(40)
    got = np.array(stub.Score(_request(rows), timeout=30).probabilities, dtype=np.float32)
    assert float(np.max(np.abs(got - _offline(out, spec, rows)))) < SERVED_TOL
    # a missing value reaches the program as NaN (the offline model above maps it to the field's
    # missing embedding), and it scores unlike any present value, 0 included
    dense = Encoder(spec).encode_rows(rows).dense
    assert np.isnan(dense[[i for i, r in enumerate(rows) if r["I1"] == ""], 0]).all()
    p = stub.Score(_request([dict(rows[3], I1=v) for v in ("", 0.0, 123.0)]), timeout=30).probabilities
    assert abs(p[0] - p[1]) > 1e-6 and abs(p[0] - p[2]) > 1e-6


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, [1, 2]])
def test_bad_numbers_are_invalid_argument(served, bad):
    _, _, _, stub = served
    row = _rows(1)[0]
    req = _request([row])
    req.rows[0].fields["I2"].CopyFrom(pb.Value(ids=pb.IdList(values=bad)) if isinstance(bad, list) else pb.Value(number=bad))
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "I2" in err.value.details()


def test_config_mistakes(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.read_text().replace('aggregation = "weighted"', 'aggregation = "mean"'))
    res = subprocess.run([sys.executable, "-m", "trainer", "search", "--config", str(cfg), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error:" in res.stderr and "search.aggregation: 'mean' is not one of" in res.stderr
    for change, says in ((("top_k = 2", "top_k = 9"), "search.top_k: must be in [1, buckets = 8]"),
                         (('numerical = { "*" = "autodis" }', ""), "data.numerical: AutoDis embeds fields")):
        cfg.write_text(CONFIG.read_text().replace(*change))
        with pytest.raises(ConfigError, match=re.escape(says)):
            load_experiment(str(cfg), [])
