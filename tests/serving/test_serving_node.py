"""A client we did not write — Node's @grpc/grpc-js + @grpc/proto-loader from npm — calls
the health check, GetModelInfo and Score (both forms) and gets the offline scores.

Runs when `node` and `npm` are on PATH. The pinned packages (tests/serving/node/package-lock.json)
are installed once with `npm ci` into a cache outside the repository:
$EMBSTACK_NODE_CACHE, else ~/.cache/embstack/node-<lock hash>. Skips, saying why, when npm
cannot install them (e.g. no registry access).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from rpc_helpers import column_request, row_request
from serving_fixtures import random_rows

from serving.predictor import Predictor

NODE_DIR = Path(__file__).parent / "node"
ROOT = Path(__file__).resolve().parents[2]
NPM_TIMEOUT = 180


def node_modules() -> Path:
    """node_modules with the locked packages, installed on first use."""
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    default = Path.home() / ".cache" / "embstack" / f"node-{hashlib.sha256(lock).hexdigest()[:12]}"
    cache = Path(os.environ.get("EMBSTACK_NODE_CACHE", default))
    modules = cache / "node_modules"
    if (modules / "@grpc" / "grpc-js").is_dir() and (modules / "@grpc" / "proto-loader").is_dir():
        return modules
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_DIR / name, cache / name)
    try:
        proc = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=cache,
                              capture_output=True, text=True, timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm ci did not finish in {NPM_TIMEOUT}s (registry unreachable?)")
    if proc.returncode != 0:
        pytest.skip(f"npm ci failed (registry unreachable?): {proc.stderr.strip().splitlines()[-1:]}")
    return modules


def as_json(request) -> list | dict:
    """A request message in the proto-loader JSON shape (field names as in the .proto)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(request, preserving_proto_field_name=True)


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="node/npm not installed")
def test_node_client_scores_and_checks_health(shared_app, bundle, spec, tmp_path):
    modules = node_modules()
    health_set = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(health_set.file.add())
    (tmp_path / "health.pb").write_bytes(health_set.SerializeToString())
    rows = random_rows(spec, 40, seed=77)
    request = {"rows": as_json(row_request(rows))["rows"], "columns": as_json(column_request(spec, rows))["columns"]}
    (tmp_path / "rows.json").write_text(json.dumps(request))

    env = {**os.environ, "NODE_PATH": str(modules)}
    proc = subprocess.run(
        ["node", str(NODE_DIR / "driver.js"), f"127.0.0.1:{shared_app.port}", str(ROOT / "proto"),
         str(tmp_path / "health.pb"), str(tmp_path / "rows.json")],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["health"] == {"": "SERVING", "embstack.v1.Inference": "SERVING"}
    assert out["info"]["bundle_version"] == "toy-v1" and [f for f, _ in out["info"]["fields"]] == spec.names
    want = Predictor(bundle).predict_rows(rows)
    for form in ("rows", "columns"):
        got = out[form]
        assert got["bundle_version"] == "toy-v1"
        assert got["clusters"] == want.clusters.tolist()
        assert float(np.max(np.abs(np.asarray(got["probabilities"]) - want.probabilities))) < 1e-6
    assert out["bad"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "unknown field 'colour'" in out["bad"]["details"]
