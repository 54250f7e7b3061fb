"""A 2-cluster toy bundle, written once per session and shared by the serving tests."""

from __future__ import annotations

import pytest
import torch
from serving_fixtures import DIMS, TinyCTR, TinyRouter, make_spec, random_rows

from serving.bundle import load_bundle, write_bundle
from serving.encode import Encoder
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
