"""iHAS labelled variants: field-level and MLP gates, clustering on masks / probabilities with
per-field scaling and restarts, the gate diagnostics, and a router that computes what was clustered."""

import numpy as np
import pytest
import torch

from trainer.data.config import DataConfig, load_dataset
from trainer.models.ctr import ModelConfig
from trainer.search.ihas.gates import FieldGates, GateMode, MLPGates
from trainer.search.ihas.clustering import field_scale, gate_diagnostics
from trainer.search.ihas.method import IHAS, IHASConfig
from trainer.search.interface import SearchContext
from trainer.training import TrainConfig


def test_field_gates_open_or_close_whole_fields():
    gates = FieldGates(12, units=3)
    gates.mode = GateMode.STOCHASTIC
    mask, p = gates(torch.randn(64, 12))
    blocks = mask.reshape(64, 3, 4)
    assert (blocks == blocks[:, :, :1]).all() and p.shape == (64, 12)
    with pytest.raises(ValueError, match="multiple"):
        FieldGates(10, units=3)


def test_mlp_gates_start_near_init_prob_and_depend_on_the_row():
    torch.manual_seed(0)
    gates = MLPGates(16, init_prob=0.9, units=8)
    _, p = gates(torch.randn(256, 16))
    assert abs(float(p.mean()) - 0.9) < 0.05 and float(p.std()) > 0


def test_field_scale_gives_every_field_unit_total_variance():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 10, (500, 4)), rng.normal(0, 0.1, (500, 4))], axis=1).astype(np.float32)
    scaled = x * field_scale(x, 2)
    assert np.allclose(scaled.var(axis=0).reshape(2, 4).sum(axis=1), 1.0, rtol=1e-4)


def test_gate_diagnostics_see_masks_that_differ_by_group():
    names = ["a", "b"]
    groups = np.array([0] * 60 + [1] * 40)
    masks = np.zeros((100, 4), dtype=np.float32)
    masks[groups == 0, :2] = 1  # group 0 opens field a, group 1 field b
    masks[groups == 1, 2:] = 1
    out = gate_diagnostics(masks, names, assign=groups, groups=groups)
    assert out["open_by_group"] == {0: {"a": 1.0, "b": 0.0}, 1: {"a": 0.0, "b": 1.0}}
    assert out["open_by_cluster"] == out["open_by_group"]
    assert out["rows_differing_from_majority_mask"] == pytest.approx(0.4)  # majority = group 0's mask


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    cfg = DataConfig(source="synthetic", rows=3000, n_categorical=4, n_numerical=0, vocab_min=5, vocab_max=40,
                     signal_fields_per_group=2, cache_dir=str(tmp_path_factory.mktemp("cache")))
    return load_dataset(cfg, log=lambda _: None)


@pytest.mark.parametrize("gates, cluster_on", [("instance", "prob"), ("field", "mask"), ("mlp", "masked"), ("instance", "logit"),
                                               ("instance", "saliency")])
def test_router_routes_rows_as_the_clustering_did(gates, cluster_on, ds, dist_env):
    tcfg = TrainConfig(eval_batch_size=512)
    ctx = SearchContext.of(ds, ModelConfig(name="mlp", embedding_dim=4, mlp=[4]), tcfg, None, dist_env, lambda _: None)
    scale = "none" if cluster_on == "saliency" else "field"  # saliency is always standardized per field
    cfg = IHASConfig(gates=gates, cluster_on=cluster_on, cluster_scale=scale, kmeans_restarts=3)
    method = IHAS(cfg, ctx)
    torch.manual_seed(0)
    method.build()
    with torch.no_grad():  # gates that differ between rows, as after a search
        for p in method.supernet.gates.parameters():
            p.normal_(0, 1.0)
        for t in method.supernet.base.embeddings.ebc.embedding_bags.values():
            t.weight.normal_(0, 1.0)
    decisions = method.derive(ctx)
    router = method.router(decisions)
    assert decisions.router.features == cluster_on
    assert len(decisions.router.scale) == (4 if cluster_on == "saliency" else 16)  # per field, or per column
    from trainer.jobs.retrain import route

    assign = route(router, ds, 512)["train"]
    assert np.bincount(assign, minlength=2).tolist() == [c.train_rows for c in decisions.clusters]
    assert decisions.details["kmeans"]["inertia"] > 0
