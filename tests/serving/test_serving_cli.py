"""`python -m serving`: JSON-line logs, serves, drains and exits 0 on SIGTERM; exit 2 on a bad bundle."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc


def log_lines(stream, until: str) -> list[dict]:
    """JSON log records up to and including the first whose msg is `until`."""
    records = []
    for line in stream:
        records.append(json.loads(line))  # every line must be JSON
        if records[-1]["msg"] == until:
            return records
    raise AssertionError(f"process ended before logging {until!r}: {records}")


def test_cli_serves_and_drains(bundle_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--bundle", str(bundle_dir), "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        records = log_lines(proc.stderr, "serving")
        assert records[-1]["version"] == "toy-v1"
        port = records[-1]["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            info = pb_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert info.bundle_version == "toy-v1"
        proc.send_signal(signal.SIGTERM)
        log_lines(proc.stderr, "stopped")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_a_corrupt_bundle(bundle_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    (bad / "cluster_0.pt2").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "serving", "--bundle", str(bad), "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE, text=True, timeout=120,
    )
    assert proc.returncode == 2
    refused = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{") and "bundle refused" in line]
    assert refused and "cluster_0.pt2: missing" in refused[0]["error"]
