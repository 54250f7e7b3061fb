"""AutoDPQ search stage: pretrain phase = the FE model, Gumbel mixture, τ schedule, derive."""

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

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
        for a in emb.alphas:
            a[3] = 50.0  # candidate 3 = (K=4, D=4) dominates every field
    method.set_phase("search")
    method.supernet.train()
    out = emb(toy_batch.sparse_features)
    a = out[0]
    mean, std = emb.target_mean_a, emb.target_std_a  # the field's pretrained moments (bn_restore)
    assert std.min() > 0.1 and mean.abs().max() > 0
    # a mixture of batch-normalised candidates mapped to the pretrained scale: its batch mean is the target
    assert torch.allclose(a.mean(0), mean, atol=1e-5)
    a.sum().backward()
    assert emb.alphas[0].grad is not None and emb.alphas[0].grad.abs().sum() > 0  # α of field a is differentiable
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


def byte_aware(toy_spec, size_weight=0.0, threshold=10):
    torch.manual_seed(0)
    cfg = ModelConfig(name="deepfm", embedding_dim=8, mlp=[8])
    fe = build_model(toy_spec, cfg)
    for table in fe.embeddings.ebc.embedding_bags.values():
        torch.nn.init.normal_(table.weight)
    m = AutoDPQ(AutoDPQConfig(threshold=threshold, ks=[2, 4], ds=[2, 4], byte_aware=True, size_weight=size_weight),
                context(toy_spec, cfg, fe.eval()))
    m.build()
    m.init_architecture()
    return m


def test_byte_aware_offers_only_candidates_that_fit_and_save_bytes(toy_spec):
    from trainer.models.layout import FULL, OTHERS, Compression, dpq
    from trainer.search.autodpq.supernet import candidate_bytes

    m = byte_aware(toy_spec)
    emb = m.embeddings
    int8, int4 = Compression("int8"), Compression("int4")
    assert emb.candidates == [FULL, OTHERS, int8, int4, dpq(2, 2), dpq(2, 4), dpq(4, 2), dpq(4, 4)]
    for i, name in enumerate(emb.searched):
        t = emb.layout.table(name)
        full = candidate_bytes(t, FULL)
        for j, c in enumerate(emb.candidates):
            fits = c.kind != "dpq" or c.k <= t.n_low
            cheaper = candidate_bytes(t, c) < full
            assert bool(emb.offered[i, j]) == (c == FULL or (fits and cheaper)), (name, c)
            if emb.offered[i, j]:
                assert emb.candidate_bytes[i, j] == candidate_bytes(t, c)
    # field g has 2 low-frequency ids: K = 4 does not fit, and no (K, D) stores less than its 2 raw
    # rows (64 bytes); int8 rows store 2 · (8 + 4) = 24 bytes, int4 rows 2 · (4 + 4) = 16
    g = emb.searched.index("g")
    assert emb.offered[g].tolist() == [True, True, True, True, False, False, False, False]
    assert emb.candidate_bytes[g, 2] == candidate_bytes(emb.layout.table("g"), FULL) - 64 + 24
    # the paper's search offers every candidate
    assert bool(m.embeddings.offered.any()) and AutoDPQConfig().byte_aware is False


def test_alpha_learns_only_from_batches_holding_the_fields_low_ids(toy_spec, toy_batch):
    m = byte_aware(toy_spec, size_weight=1.0)
    emb = m.embeddings
    m.set_phase("search")
    m.supernet.train()
    kjt = toy_batch.sparse_features
    b = toy_batch.labels.shape[0]
    values = kjt.values().clone()
    values[:b] = values[:b] % emb.layout.table("a").n_full  # field a: only frequent ids in this batch
    toy_batch = Batch(toy_batch.dense_features, KeyedJaggedTensor.from_lengths_sync(kjt.keys(), values, kjt.lengths()),
                      toy_batch.labels)
    fields = toy_batch.sparse_features.to_dict()
    low = {n: bool((fields[n].values() >= emb.layout.table(n).n_full).any()) for n in emb.searched}
    assert any(low.values()) and not all(low.values())  # the toy batch holds some fields' low ids, not all
    opt = torch.optim.Adam(m.arch_parameters(), lr=0.1)
    before = [a.detach().clone() for a in emb.alphas]
    opt.zero_grad()
    logit = m.supernet(toy_batch.dense_features, toy_batch.sparse_features)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, toy_batch.labels)
    m.arch_loss(bce).backward()
    opt.step()
    for i, name in enumerate(emb.searched):
        assert (emb.alphas[i].grad is not None) == low[name], name
        assert torch.equal(emb.alphas[i].detach(), before[i]) != low[name]  # Adam skipped exactly the absent fields


def test_the_bytes_term_moves_alpha_toward_cheaper_candidates(toy_spec, toy_batch):
    """With a constant BCE the only signal is λ · E[bytes]: every present field's α
    shifts probability from "full" (the costliest offered) to the cheapest candidate."""
    m = byte_aware(toy_spec, size_weight=5.0)
    emb = m.embeddings
    m.set_phase("search")
    m.supernet.train()
    opt = torch.optim.SGD(m.arch_parameters(), lr=50.0)
    present = None
    for _ in range(60):  # several candidates cost nearly the same: the gap between them closes slowly
        opt.zero_grad()
        m.supernet(toy_batch.dense_features, toy_batch.sparse_features)
        present = set(emb.present)
        m.arch_loss(torch.zeros(())).backward()
        opt.step()
    assert present
    chosen = emb.chosen()
    for i in present:
        probs = torch.softmax(emb.logits(i).detach(), 0)
        cost = emb.candidate_bytes[i].masked_fill(~emb.offered[i], float("inf"))
        cheapest = cost == cost.min()  # ties share the mass (field a: "others" and int4 rows, 160 bytes each)
        assert probs[cheapest].sum() > 0.5 and probs[0] < 1 / int(emb.offered[i].sum())  # 0 = "full"
        assert bool(cheapest[emb.candidates.index(chosen[emb.searched[i]])])


def test_a_supernet_saved_with_one_alpha_tensor_loads_per_field(method):
    state = method.supernet.state_dict()
    alpha = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4)
    assert not any("offered" in k or "candidate_bytes" in k for k in state)  # derived from the layout, not saved
    old = {k: v for k, v in state.items() if ".alphas." not in k} | {"embeddings.alpha": alpha}
    method.supernet.load_state_dict(old)
    assert torch.equal(method.embeddings.alpha, alpha)
