"""A 2-cluster toy bundle, written once per session, and servers over it, shared by the serving tests."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
import torch
from serving_fixtures import DIMS, TinyCTR, TinyRouter, make_spec, random_rows

import serving.server as server_mod
from serving.bundle import load_bundle, write_bundle
from serving.encode import Encoder, Limits
from serving.config import ServerConfig
from serving.features import FeatureSpec


@pytest.fixture(scope="session")
def spec() -> FeatureSpec:
    return make_spec()


@pytest.fixture(scope="session")
def models(spec):
    torch.manual_seed(0)
    cluster_models = [TinyCTR(spec, d).eval() for d in DIMS]
    router = TinyRouter(spec, len(DIMS)).eval()
    return cluster_models, router


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, spec, models):
    cluster_models, router = models
    example = Encoder(spec).encode_rows(random_rows(spec, 32, seed=1)).to_inputs(spec.names)
    out = tmp_path_factory.mktemp("bundles") / "toy-v1"
    write_bundle(
        out,
        spec=spec,
        cluster_models=cluster_models,
        router=router,
        example=example,
        version="toy-v1",
        metadata={"method": "stand-in"},
        metrics={"auc": 0.5},
        dims=DIMS,
    )
    return out


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


# ----------------------------------------------------------------- running servers
# torch.export deserialisation costs ~1 s per program, so in-process servers reuse the
# session bundle's loaded programs (keyed by the sha256 that load_bundle verifies, exactly
# as a hot reload does). Real program loading is covered by test_serving_bundle and by
# the `python -m serving` subprocess tests.
SHARED_MAX_ROWS = 64
SHARED_CONFIG = dict(max_workers=8, max_message_bytes=256 * 1024, limits=Limits(max_rows=SHARED_MAX_ROWS, max_bag=16))


def _reusing_load(real, bundle):
    def load(path, **kwargs):
        kwargs["reuse"] = kwargs.get("reuse") or bundle.programs_by_sha256()
        return real(path, **kwargs)

    return load


@pytest.fixture
def start_server(bundle, monkeypatch):
    """start_app(bundle_dir, config) reusing loaded programs; stops what it started."""
    monkeypatch.setattr(server_mod, "load_bundle", _reusing_load(server_mod.load_bundle, bundle))
    apps = []

    def start(bundle_dir, config: ServerConfig | None = None, address: str = "127.0.0.1:0"):
        config = config or ServerConfig(**SHARED_CONFIG)
        if config.latency_budget_ms == ServerConfig.latency_budget_ms:
            # These tests check answers, not the machine's speed: on a loaded CI machine
            # the default budget would shed their bursts. Tests of the budget set their own.
            config = replace(config, latency_budget_ms=None)
        app = server_mod.start_app(bundle_dir, address, config)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop(None).wait(10)


@pytest.fixture(scope="session")
def shared_app(bundle_dir, bundle):
    """One server for the tests that only read: batching on, metrics on, admin off.
    Tests must not reload or stop it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server_mod, "load_bundle", _reusing_load(server_mod.load_bundle, bundle))
        app = server_mod.start_app(bundle_dir, "127.0.0.1:0", ServerConfig(**SHARED_CONFIG, metrics_port=0))
    yield app
    app.stop(None).wait(10)


@pytest.fixture(scope="session")
def shared_channel(shared_app):
    channel = grpc.insecure_channel(f"127.0.0.1:{shared_app.port}")
    yield channel
    channel.close()
