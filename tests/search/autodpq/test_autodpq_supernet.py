"""AutoDPQ search stage: pretrain phase = the FE model, Gumbel mixture, τ schedule, derive."""

import numpy as np
import pytest
import torch

from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.search.autodpq.method import AutoDPQ, AutoDPQConfig
from trainer.search.gumbel import GumbelSchedule
from trainer.search.interface import SearchContext
from trainer.training import TrainConfig

COUNTS = {
    "a": np.array([0, 50, 40, 30, 5, 3, 2, 1]),
    "n": np.array([0, 90, 20, 9, 1]),
    "g": np.array([0, 30, 5, 2]),
    "c": np.array([0, 70, 60]),
}


def context(spec, cfg, base=None) -> SearchContext:
    return SearchContext(spec, cfg, TrainConfig(), None, COUNTS, 100, base, None, lambda _: None)


@pytest.fixture
def method(toy_spec):
    torch.manual_seed(0)
    cfg = ModelConfig(name="deepfm", embedding_dim=8, mlp=[8])
    fe = build_model(toy_spec, cfg)
    for table in fe.embeddings.ebc.embedding_bags.values():
        torch.nn.init.normal_(table.weight)
    m = AutoDPQ(AutoDPQConfig(threshold=10, ks=[2, 4], ds=[2, 4]), context(toy_spec, cfg, fe.eval()))
    m.build()
    return m


def test_pretrain_phase_is_the_uncompressed_model(method, toy_batch):
    method.set_phase("pretrain")
    method.supernet.eval()
    with torch.no_grad():
        got = method.supernet(toy_batch.dense_features, toy_batch.sparse_features)
        want = method.pretrained(toy_batch.dense_features, toy_batch.sparse_features)
    assert torch.allclose(got, want, atol=1e-5)
    assert method.searched == ["a", "n", "g"]  # c has no low-frequency ids


def test_gumbel_temperature_follows_weight_steps(method, toy_batch):
    assert GumbelSchedule()(0) == 1.0 and GumbelSchedule()(10_000) == pytest.approx(0.5) and GumbelSchedule()(10**6) == 0.01
    method.init_architecture()
    method.set_phase("search")
    clock = method.embeddings.clock
    for step in range(3):  # one weight step, then one architecture step (as run_search alternates)
        method.supernet(toy_batch.dense_features, toy_batch.sparse_features)
        method.supernet(toy_batch.dense_features, toy_batch.sparse_features)
        method.arch_loss(torch.tensor(0.0))
    assert clock.weight_steps == 3 and clock.arch_steps == 3
    assert clock.tau == pytest.approx(1 - 3 * 5e-5)


def test_search_mixes_batch_normalised_candidates_and_eval_takes_argmax(method, toy_batch):
    method.init_architecture()
    emb = method.embeddings
    with torch.no_grad():
        emb.alpha[:, 3] = 50.0  # candidate 3 = (K=4, D=4) dominates every field
    method.set_phase("search")
    method.supernet.train()
    out = emb(toy_batch.sparse_features)
    a = out[0]
    mean, std = emb.target_mean_a, emb.target_std_a  # the field's pretrained moments (bn_restore)
    assert std.min() > 0.1 and mean.abs().max() > 0
    # a mixture of batch-normalised candidates mapped to the pretrained scale: its batch mean is the target
    assert torch.allclose(a.mean(0), mean, atol=1e-5)
    a.sum().backward()
    assert emb.alpha.grad is not None and emb.alpha.grad.abs().sum() > 0  # α is differentiable
    for book in emb.codebooks["a"]:
        assert book.centroids.grad is not None  # every candidate is trained
    method.set_phase("eval")
    method.supernet.eval()
    with torch.no_grad():
        chosen = emb(toy_batch.sparse_features)[0]
        cand = emb.codebooks["a"][3]
        t = emb.layout.table("a")
        rows, raw = emb.low_rows(t, toy_batch.sparse_features.to_dict()["a"])
        from trainer.models.dpq import pool_rows

        high = emb._lookup(*emb._inputs(toy_batch.sparse_features.to_dict()))["a:dpq"][:, :8]
        want = emb.bns["a"][3](high + pool_rows(rows, cand(raw), 8)) * std + mean
    assert torch.allclose(chosen, want, atol=1e-6)
    decisions = method.derive(context(method.spec, method.model_cfg))
    fields = decisions.clusters[0].fields
    assert {n: (f.storage.kind, f.storage.k, f.storage.d) for n, f in fields.items()} == {
        "a": ("dpq", 4, 4), "n": ("dpq", 4, 4), "g": ("dpq", 4, 4), "c": ("full", 0, 0)
    }
    assert fields["a"].storage.n_full == 4 and fields["a"].dim == 8
    assert decisions.details["probs"]["a"][3] > 0.99
