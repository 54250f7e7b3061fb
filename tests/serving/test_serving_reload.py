"""Hot reload under load: 20 reloads → 0 failed requests and versions never go backwards;
corrupted bundles are refused while the old version keeps serving; the admin token."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2_grpc
from rpc_helpers import SERVING, column_request, health_status, row_request
from serving_fixtures import random_rows

from serving._proto.embstack.v1 import admin_pb2, admin_pb2_grpc
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.batcher import BatchConfig
from serving.bundle import MANIFEST
from serving.bundle.manifest import _sha256
from serving.encode import Limits
from serving.config import ServerConfig

TOKEN = "s3cret-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
CONFIG = ServerConfig(max_workers=8, limits=Limits(max_rows=64, max_bag=16), metrics_port=0, admin_token=TOKEN)


def versioned_copy(src: Path, dst: Path, version: str) -> Path:
    """The same models under another bundle version (the manifest is not in its own file list)."""
    shutil.copytree(src, dst)
    edit_manifest(dst, lambda m: m.update(bundle_version=version))
    return dst


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / MANIFEST
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


class Load:
    """Client threads sending Score requests in a loop, recording per request, in order:
    (version, code, (request index, probabilities or error), monotonic time it was sent)."""

    def __init__(self, port: int, requests: list[pb.ScoreRequest], threads: int = 3):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.requests = requests
        self.stop = threading.Event()
        self.results: list[list[tuple[str, str, tuple, float]]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def _run(self, k: int) -> None:
        i = k
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                reply = self.stub.Score(self.requests[i % len(self.requests)], timeout=20)
                self.results[k].append((reply.bundle_version, "OK", (i % len(self.requests), tuple(reply.probabilities)), sent))
            except grpc.RpcError as e:
                self.results[k].append(("", e.code().name, (i % len(self.requests), e.details()), sent))
            i += 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.channel.close()

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.results)

    def failures(self) -> list:
        return [r for rs in self.results for r in rs if r[1] != "OK"]


def reload(channel, bundle_dir: str = "", metadata=AUTH, timeout: float = 60):
    return admin_pb2_grpc.AdminStub(channel).Reload(admin_pb2.ReloadRequest(bundle_dir=bundle_dir), metadata=metadata, timeout=timeout)


@pytest.fixture
def requests(spec):
    return [row_request(random_rows(spec, 16, seed=s)) if s % 2 else column_request(spec, random_rows(spec, 16, seed=s)) for s in range(6)]


@pytest.mark.parametrize("batching", [True, False], ids=["batching-on", "batching-off"])
def test_twenty_reloads_under_load(batching, bundle_dir, tmp_path, start_server, requests):
    versions = [f"toy-v1.{k:02d}" for k in range(1, 21)]  # sort order = reload order
    bundles = [versioned_copy(bundle_dir, tmp_path / v, v) for v in versions]
    app = start_server(bundle_dir, dataclasses.replace(CONFIG, batching=BatchConfig(enabled=batching)))
    order = ["toy-v1", *versions]
    swapped_at = []  # when each reload had returned
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as admin, Load(app.port, requests) as load:
        assert wait_until_count(load, 10)
        for k, path in enumerate(bundles):
            reply = reload(admin, str(path))
            swapped_at.append(time.monotonic())
            assert (reply.bundle_version, reply.previous_version) == (versions[k], order[k])
            assert reply.seconds > 0 and reply.bundle_dir == str(path)
            assert wait_until_count(load, load.count + 6)  # traffic flows on the new version
    assert load.failures() == []
    assert load.count >= 20 * 6
    for per_client in load.results:
        idx = [order.index(v) for v, _, _, _ in per_client]
        assert idx == sorted(idx), "a client saw the version go backwards"
    # across clients too: a request sent after reload k returned is scored by version k or later
    for v, _, _, sent in (r for rs in load.results for r in rs):
        newest_swap = sum(1 for t in swapped_at if t < sent)
        assert order.index(v) >= newest_swap, (v, order[newest_swap])
    seen_versions = {v for rs in load.results for v, _, _, _ in rs}
    assert len(seen_versions) >= 10 and versions[-1] in seen_versions
    # the same models under every version: the same scores for identical requests, up to the
    # float rounding that depends on how many rows a cluster model scores at once (batching
    # merges requests; measured ≤ 2 ulp, ~6e-8)
    by_request: dict[int, list] = {}
    for rs in load.results:
        for _, _, (i, probs), _ in rs:
            by_request.setdefault(i, []).append(np.asarray(probs))
    assert all(np.abs(np.stack(ps) - ps[0]).max() <= 1e-6 for ps in by_request.values())
    assert app.metrics.value("embstack_reloads_total", result="ok") == 20 and app.metrics.value("embstack_reloads_total", result="failed") == 0
    assert app.host.version == versions[-1]


def corrupt(kind: str, bundle_dir: Path, dst: Path) -> tuple[Path, str]:
    """A broken copy of the bundle and the words its refusal must contain."""
    if kind == "missing directory":
        return dst / "nowhere", "missing"
    versioned_copy(bundle_dir, dst, f"bad-{kind}")
    if kind == "bad hash":
        data = bytearray((dst / "cluster_1.pt2").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (dst / "cluster_1.pt2").write_bytes(bytes(data))
        return dst, "cluster_1.pt2: sha256"
    if kind == "truncated file":
        data = (dst / "cluster_0.pt2").read_bytes()
        (dst / "cluster_0.pt2").write_bytes(data[: len(data) // 2])
        return dst, "cluster_0.pt2: "
    if kind == "missing cluster model":
        (dst / "cluster_1.pt2").unlink()
        return dst, "cluster_1.pt2: missing"
    if kind == "cluster dropped from manifest":
        edit_manifest(dst, lambda m: m.update(clusters=m["clusters"][:1]))
        return dst, "outputs of 2 cluster models"
    if kind == "golden outputs differ (hashes consistent)":
        logits = np.load(dst / "golden/logits.npy")
        np.save(dst / "golden/logits.npy", logits + 0.5)
        new = {"sha256": _sha256(dst / "golden/logits.npy"), "bytes": (dst / "golden/logits.npy").stat().st_size}
        edit_manifest(dst, lambda m: m["files"].update({"golden/logits.npy": new}))
        return dst, "logits differ"
    if kind == "unsupported schema version":
        edit_manifest(dst, lambda m: m.update(schema_version=99))
        return dst, "schema_version 99"
    raise AssertionError(kind)


KINDS = ["bad hash", "truncated file", "missing cluster model", "cluster dropped from manifest",
         "golden outputs differ (hashes consistent)", "unsupported schema version", "missing directory"]


def test_corrupted_bundles_are_refused_while_the_old_one_serves(bundle_dir, tmp_path, start_server, requests):
    app = start_server(bundle_dir, CONFIG)
    broken = [(kind, *corrupt(kind, bundle_dir, tmp_path / f"bad{k}")) for k, kind in enumerate(KINDS)]
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as admin, Load(app.port, requests) as load:
        assert wait_until_count(load, 10)
        for kind, path, words in broken:
            with pytest.raises(grpc.RpcError) as info:
                reload(admin, str(path))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, kind
            assert words in info.value.details(), (kind, info.value.details())
            assert app.host.version == "toy-v1"
        seen = load.count
        assert wait_until_count(load, seen + 6)
        assert health_status(health_pb2_grpc.HealthStub(admin)) == SERVING
        good = reload(admin, str(versioned_copy(bundle_dir, tmp_path / "good", "toy-v2")))  # a good one still goes in
        assert good.previous_version == "toy-v1" and good.bundle_version == "toy-v2"
    assert load.failures() == []
    assert {v for rs in load.results for v, _, _, _ in rs} <= {"toy-v1", "toy-v2"}
    assert app.metrics.value("embstack_reloads_total", result="failed") == len(KINDS) and app.metrics.value("embstack_reloads_total", result="ok") == 1


def test_admin_token_is_required(bundle_dir, start_server, shared_channel, tmp_path):
    app = start_server(bundle_dir, CONFIG)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),)):
            with pytest.raises(grpc.RpcError) as info:
                reload(channel, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
    with pytest.raises(grpc.RpcError) as info:  # the shared server has no token: admin is off
        reload(shared_channel)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "EMBSTACK_ADMIN_TOKEN" in info.value.details()
    assert app.metrics.value("embstack_reloads_total", result="ok") == 0


def test_reload_without_a_path_rereads_the_startup_path(bundle_dir, tmp_path, start_server):
    """--bundle may be a symlink: repoint it, then Reload("") (or SIGHUP) follows it."""
    v1 = versioned_copy(bundle_dir, tmp_path / "v1", "toy-v1")
    v2 = versioned_copy(bundle_dir, tmp_path / "v2", "toy-v2")
    current = tmp_path / "current"
    current.symlink_to(v1)
    app = start_server(current, CONFIG)
    tmp_link = tmp_path / "current.new"
    tmp_link.symlink_to(v2)
    os.replace(tmp_link, current)  # atomic repoint
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = reload(channel)
        assert (reply.bundle_version, reply.previous_version, reply.bundle_dir) == ("toy-v2", "toy-v1", str(current))
        info = pb_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.bundle_version == "toy-v2"


def wait_until_count(load: Load, n: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while load.count < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return load.count >= n
