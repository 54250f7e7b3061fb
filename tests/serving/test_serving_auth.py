"""Optional TLS (and mutual TLS) and bearer-token authentication; the health check is
exempt from the token. Certificates are made with the `openssl` command (skipped without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rpc_helpers import SERVING, health_status, row_request
from serving_fixtures import random_rows

from serving.__main__ import build_config, parse_args
from serving._proto.embstack.v1 import admin_pb2, admin_pb2_grpc
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.encode import Limits
from serving.predictor import Predictor
from serving.config import ServerConfig, TlsConfig

TOKEN = "inference-token-123"
ADMIN = "admin-token-456"
LIMITS = Limits(max_rows=64, max_bag=16)
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("certs")
    for name in ("ca", "server", "client", "other-ca"):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-new", "-key", f"{ca}.key", "-subj", f"/CN=embstack test {ca}", "-days", "2", "-out", f"{ca}.pem", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN=embstack {name}", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d


def tls_channel(port: int, certs: Path, ca: str = "ca.pem", client: bool = False) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / ca).read_bytes(),
        private_key=(certs / "client.key").read_bytes() if client else None,
        certificate_chain=(certs / "client.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, env=env)


def test_token_is_required_except_for_health_and_admin(bundle_dir, bundle, spec, start_server):
    app = start_server(bundle_dir, ServerConfig(max_workers=4, limits=LIMITS, auth_token=TOKEN, admin_token=ADMIN))
    rows = random_rows(spec, 12, seed=9)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        for metadata in ((), bearer("wrong"), (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),), bearer(ADMIN)):
            for call, request in ((stub.Score, row_request(rows)), (stub.Score, b"\xff"), (stub.GetModelInfo, pb.GetModelInfoRequest())):
                with pytest.raises(grpc.RpcError) as info:
                    if isinstance(request, bytes):  # refused before the bytes are parsed
                        channel.unary_unary("/embstack.v1.Inference/Score")(request, timeout=5, metadata=metadata)
                    else:
                        call(request, timeout=5, metadata=metadata)
                assert info.value.code() == UNAUTH and "Bearer" in info.value.details(), metadata
        # reflection (a streaming RPC) is guarded too
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        assert info.value.code() == UNAUTH
        # health is exempt; Admin checks its own token
        assert health_status(health_pb2_grpc.HealthStub(channel)) == SERVING
        admin = admin_pb2_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            admin.Reload(admin_pb2.ReloadRequest(), metadata=bearer(TOKEN), timeout=30)
        assert info.value.code() == UNAUTH
        assert admin.Reload(admin_pb2.ReloadRequest(), metadata=bearer(ADMIN), timeout=30).bundle_version == "toy-v1"
        # with the token: the offline scores
        reply = stub.Score(row_request(rows), timeout=10, metadata=bearer(TOKEN))
        want = Predictor(bundle, LIMITS).predict_rows(rows)
        assert list(reply.clusters) == want.clusters.tolist()
        assert float(np.max(np.abs(np.asarray(reply.probabilities) - want.probabilities))) < 1e-6
        listed = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5, metadata=bearer(TOKEN))
        assert "embstack.v1.Inference" in {s.name for r in listed for s in r.list_services_response.service}
    assert app.metrics.value("embstack_requests_total", method="embstack.v1.Inference/Score", code="UNAUTHENTICATED") == 10
    assert app.metrics.value("embstack_requests_total", method="embstack.v1.Inference/Score", code="OK") == 1


def test_tls_with_token_and_the_command_line_tools(bundle_dir, bundle, spec, start_server, certs, tmp_path):
    tls = TlsConfig.from_files(certs / "server.pem", certs / "server.key")
    app = start_server(bundle_dir, ServerConfig(max_workers=4, limits=LIMITS, tls=tls, auth_token=TOKEN))
    rows = random_rows(spec, 10, seed=4)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as plain:  # plaintext to a TLS port: no connection
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.InferenceStub(plain).Score(row_request(rows), timeout=3, metadata=bearer(TOKEN))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with tls_channel(app.port, certs, ca="other-ca.pem") as untrusted:  # a server cert we do not trust
        with pytest.raises(grpc.RpcError) as info:
            health_status(health_pb2_grpc.HealthStub(untrusted))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with tls_channel(app.port, certs) as channel:
        assert health_status(health_pb2_grpc.HealthStub(channel)) == SERVING
        stub = pb_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(row_request(rows), timeout=5)
        assert info.value.code() == UNAUTH
        reply = stub.Score(row_request(rows), timeout=5, metadata=bearer(TOKEN))
        assert reply.bundle_version == "toy-v1" and len(reply.probabilities) == 10

    target = f"127.0.0.1:{app.port}"
    tls_args = ["--tls-ca", str(certs / "ca.pem")]
    ok = run("serving.healthcheck", "--target", target, *tls_args)
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    plain = run("serving.healthcheck", "--target", target, "--timeout", "1")
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "token").write_text(TOKEN + "\n")
    scored = run("serving.client", "--target", target, "--rows", str(tmp_path / "rows.jsonl"), *tls_args, "--token-file", str(tmp_path / "token"))
    assert scored.returncode == 0, scored.stderr
    want = Predictor(bundle, LIMITS).predict_rows(rows)
    got = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [g["cluster"] for g in got] == want.clusters.tolist()
    assert max(abs(g["probability"] - p) for g, p in zip(got, want.probabilities.tolist())) < 1e-6
    refused = run("serving.client", "--target", target, "--rows", str(tmp_path / "rows.jsonl"), *tls_args)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


def test_mutual_tls_needs_a_client_certificate(bundle_dir, start_server, certs):
    tls = TlsConfig.from_files(certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
    app = start_server(bundle_dir, ServerConfig(max_workers=4, limits=LIMITS, tls=tls))
    with tls_channel(app.port, certs) as anonymous:
        with pytest.raises(grpc.RpcError) as info:
            health_status(health_pb2_grpc.HealthStub(anonymous))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with tls_channel(app.port, certs, client=True) as channel:
        assert health_status(health_pb2_grpc.HealthStub(channel)) == SERVING
        assert pb_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5).bundle_version == "toy-v1"


def test_command_line_flags(certs, tmp_path, monkeypatch):
    monkeypatch.delenv("EMBSTACK_AUTH_TOKEN", raising=False)
    base = ["--bundle", "b"]
    assert build_config(parse_args(base)).tls is None and build_config(parse_args(base)).auth_token is None
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    config = build_config(parse_args([*base, "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                                       "--tls-client-ca", str(certs / "ca.pem"), "--auth-token-file", str(tmp_path / "token")]))
    assert config.tls.cert_chain == (certs / "server.pem").read_bytes() and config.tls.client_ca == (certs / "ca.pem").read_bytes()
    assert config.auth_token == TOKEN
    monkeypatch.setenv("EMBSTACK_AUTH_TOKEN", "from-env")
    assert build_config(parse_args(base)).auth_token == "from-env"
    (tmp_path / "empty").write_text("\n")
    for bad in (["--tls-cert", str(certs / "server.pem")], ["--tls-key", str(certs / "server.key")],
                ["--tls-client-ca", str(certs / "ca.pem")], ["--auth-token-file", str(tmp_path / "empty")]):
        with pytest.raises(ValueError):
            build_config(parse_args([*base, *bad]))
    with pytest.raises(OSError):
        build_config(parse_args([*base, "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(certs / "server.key")]))
