"""AIM: each interaction function against a hand computation, Map_i, function-wise tables
with the searched dims, Algorithm 1's candidate pool, and the staged search's bookkeeping."""

import math

import pytest
import torch

from trainer.decisions import ClusterDecision, Decisions, FieldDecision, Interaction
from trainer.models.aim import AIMModel, Terms
from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.search.aim.method import AIM, AIMConfig, combine
from trainer.search.interface import SearchContext
from trainer.training import TrainConfig, TrainingError

D = 4


def stacked_input(n=5, b=6):
    torch.manual_seed(1)
    return torch.randn(b, n, D)


@pytest.mark.parametrize("order", [2, 3])
def test_each_function_matches_a_hand_computation(order):
    x = stacked_input()
    index = torch.tensor([[0, 1, 2, 3, 4][:order], [4, 2, 0, 1, 3][:order]]).T.contiguous()  # 2 tuples
    tuples = index.T.tolist()
    got = {}
    for fn in ("inner", "vector_kernel", "scalar_kernel", "outer"):
        t = Terms(fn, index, D)
        with torch.no_grad():
            for p in t.parameters():
                p.copy_(torch.randn_like(p))
        got[fn] = (t, t(x))
    for j, tup in enumerate(tuples):
        prod = torch.ones(x.shape[0], D)
        for f in tup:
            prod = prod * x[:, f]
        assert torch.allclose(got["inner"][1][:, j], prod.sum(1), atol=1e-6)  # float32 sums
        phi_v = got["vector_kernel"][0].phi[j]
        assert torch.allclose(got["vector_kernel"][1][:, j], (prod * phi_v).sum(1), atol=1e-5)
        phi_s = got["scalar_kernel"][0].phi[j]
        assert torch.allclose(got["scalar_kernel"][1][:, j], phi_s * prod.sum(1), atol=1e-5)
        w = got["outer"][0].w  # [p, T, D]: one projection per side of each interaction
        proj = torch.ones(x.shape[0])
        for s, f in enumerate(tup):
            proj = proj * (x[:, f] @ w[s, j])
        assert torch.allclose(got["outer"][1][:, j], proj, atol=1e-5)


def test_gated_terms_normalise_without_affine_and_scale_by_alpha():
    x = stacked_input()
    index = torch.tensor([[0, 1], [2, 3], [1, 4]]).T.contiguous()
    t = Terms("inner", index, D, gated=True, alpha_init=0.5).eval()
    assert t.bn.weight is None and t.bn.bias is None
    with torch.no_grad():
        t.alpha.copy_(torch.tensor([0.5, 0.0, -2.0]))
        raw = Terms("inner", index, D)(x)
        want = (raw - t.bn.running_mean) / torch.sqrt(t.bn.running_var + t.bn.eps) * t.alpha
        assert torch.allclose(t(x), want, atol=1e-6)
        assert torch.equal(t(x)[:, 1], torch.zeros(x.shape[0]))  # α = 0 closes the interaction exactly


@pytest.mark.parametrize("fn", ["inner", "vector_kernel", "scalar_kernel", "outer"])
def test_centred_terms_are_the_functions_of_centred_embeddings(fn):
    """Centred gated terms equal the plain function of x − field mean (batch mean in
    training, the running mean in eval), so a constant added to a field's embeddings moves
    nothing; every term of order 3 too."""
    x = stacked_input()
    index = torch.tensor([[0, 1, 2], [2, 3, 4], [1, 4, 0]]).T.contiguous()
    torch.manual_seed(2)
    t = Terms(fn, index, D, gated=True, alpha_init=0.7, centred=True, n_fields=5)
    plain = Terms(fn, index, D)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(torch.randn_like(p))
            dict(t.named_parameters())[name].copy_(p)
    t.train()
    got = t(x)
    ref = torch.nn.BatchNorm1d(3, affine=False)(plain(x - x.mean(0))) * 0.7
    assert torch.allclose(got, ref, atol=1e-5)
    shifted = x.clone()
    shifted[:, 2] += 3.0
    assert torch.allclose(t(shifted), got, atol=1e-4)
    with torch.no_grad():
        t.field_mean.copy_(x.mean(0))
    t.eval()
    want = (plain(x - x.mean(0)) - t.bn.running_mean) / torch.sqrt(t.bn.running_var + t.bn.eps) * 0.7
    assert torch.allclose(t(x), want, atol=1e-5)


def test_combine_builds_algorithm_1s_pool_not_every_tuple():
    fields = tuple(f"F{i}" for i in range(10))
    top = [("F0", "F1"), ("F2", "F3"), ("F0", "F2")]  # k = 3 tuples of order 2
    pool = combine(top, fields)
    assert all(len(set(t)) == 3 for t in pool) and len(pool) == len(set(pool))
    # each top tuple grows by each of the 8 fields it lacks (24), and {F0,F1,F2}, {F0,F2,F3}
    # arise twice each
    assert len(pool) == len({frozenset((*t, f)) for t in top for f in fields if f not in t}) == 22
    assert len(pool) < math.comb(10, 3)
    assert ("F0", "F1", "F2") in pool and ("F1", "F0", "F2") not in pool  # fields' order, no repeats


def test_function_wise_tables_per_field_and_function_with_the_searched_dims(toy_spec, toy_batch):
    cfg = ModelConfig(name="deepfm", embedding_dim=D, mlp=[4])
    fields = {"a": FieldDecision(2, (1, 3)), "n": FieldDecision(D), "g": FieldDecision(1, (2,)), "c": FieldDecision(3, (0, 1, 2))}
    cluster = ClusterDecision(0, fields, 10)
    inter = (Interaction(("a", "g"), "outer"), Interaction(("a", "n", "c"), "inner"), Interaction(("n", "c"), "vector_kernel"))
    d = Decisions("aim", (cluster,), interactions=inter, interaction_model="aim", function_wise=True)
    model = build_model(toy_spec, cfg, cluster=cluster, **{k: v for k, v in d.model_options().items()})
    assert isinstance(model, AIMModel) and model.embeddings.sets == ("inner", "vector_kernel", "outer")
    dims = {"a": 2, "n": D, "g": 1, "c": 3}
    # a set stores the fields its function's interactions read; the first set every field (the MLP reads them)
    stores = {"inner": ["a", "n", "g", "c"], "vector_kernel": ["n", "c"], "outer": ["a", "g"]}
    for s, emb in model.embeddings.tables.items():
        widths = {c.name: c.embedding_dim for c in emb.ebc.embedding_bag_configs()}
        assert set(widths) == {f"t_{f}" for f in stores[s]}, s
        assert emb.layout.dims == tuple(dims[f] for f in stores[s])
    shared = build_model(toy_spec, cfg, cluster=cluster, interactions=inter, interaction_model="aim", function_wise=False)
    assert shared.embeddings.sets == ("shared",)
    per_field = {f: p for f, p in zip(shared.embeddings.layout.fields, [8 * 2, 5 * D, 4 * 1, 3 * 3])}
    assert shared.embeddings.layout.embedding_params == sum(per_field.values())
    assert model.embeddings.layout.embedding_params == sum(per_field[f] for fs in stores.values() for f in fs)
    fm = build_model(toy_spec, ModelConfig(name="fm", embedding_dim=D), cluster=cluster, **d.model_options())
    assert fm.embeddings.tables["inner"].layout.fields == ("a", "n", "c")  # without an MLP g is read by outer only
    # Map_i: a field's stored values land at its kept positions, zeros elsewhere and for fields a set does not store
    with torch.no_grad():
        embs = model.embeddings.tables["inner"](toy_batch.sparse_features)
        placed = model.embeddings.placed_stack("inner", embs)
        assert torch.equal(placed[:, 0, [1, 3]], embs[0]) and torch.equal(placed[:, 0, [0, 2]], torch.zeros(8, 2))
        assert torch.equal(placed[:, 2, 2], embs[2][:, 0]) and torch.equal(placed[:, 3, :3], embs[3])
        outer = model.embeddings.placed_stack("outer", model.embeddings.tables["outer"](toy_batch.sparse_features))
        assert torch.equal(outer[:, 1], torch.zeros(8, D)) and torch.equal(outer[:, 3], torch.zeros(8, D))
        assert model(toy_batch.dense_features, toy_batch.sparse_features).shape == (8,)
    assert sorted((tuple(t.index.shape), t.function) for t in model.terms) == [((2, 1), "outer"), ((2, 1), "vector_kernel"),
                                                                               ((3, 1), "inner")]


def context(spec):
    return SearchContext(spec, ModelConfig(name="fm", embedding_dim=D), TrainConfig(), None, {}, 100, None, None, lambda _: None)


def test_stages_keep_nonzero_gates_and_seed_the_next_order(toy_spec):
    cfg = AIMConfig(max_order=3, functions=["inner", "outer"], top_k=2, eds=True)
    m = AIM(cfg, context(toy_spec))
    assert m.stage == "order 2" and len(m.candidates) == 6
    m.build()
    assert len(m.arch_parameters()) == 2 and sum(p.numel() for p in m.arch_parameters()) == 12
    with torch.no_grad():
        for t in m.gated_terms():
            t.alpha.zero_()
            if t.function == "outer":
                t.alpha[0] = 0.9  # (a, n) with outer
            else:
                t.alpha[5] = -0.4  # (g, c) with inner
    nxt = m.next_stage(cfg)
    assert nxt is cfg and m.stage == "order 3"
    assert set(m.kept) == {(("a", "n"), "outer"), (("g", "c"), "inner")}
    assert m.candidates == combine([("a", "n"), ("g", "c")], ("a", "n", "g", "c"))
    m.build()
    assert all(t.index.shape[0] == 3 for t in m.gated_terms())
    fixed = [t for t in m.supernet.terms if t.alpha is None]
    assert sorted(t.function for t in fixed) == ["inner", "outer"]  # order-2 kept terms stay, ungated
    with torch.no_grad():
        for t in m.gated_terms():
            t.alpha.zero_()
    eds = m.next_stage(cfg)
    assert m.stage == "embed" and eds.grda_c == cfg.eds_c and eds.grda_mu == cfg.eds_mu
    m.build()
    assert m.arch_parameters() == [m.supernet.beta]
    with torch.no_grad():
        m.supernet.beta.zero_()
        m.supernet.beta[0, [0, 2]] = 1.0  # a keeps dims 0 and 2
        m.supernet.beta[2, 1] = 1.0  # g keeps dim 1
        m.supernet.beta[3, :] = 1.0  # c keeps all
    assert m.next_stage(cfg) is None
    d = m.derive(context(toy_spec))
    assert d.interaction_model == "aim" and d.function_wise
    assert d.clusters[0].fields["a"].dim == 2 and d.clusters[0].fields["a"].kept == (0, 2)
    assert d.clusters[0].fields["c"].dim == D and d.clusters[0].fields["n"].dim == 0
    assert [tuple(i.fields) for i in d.interactions] == [("g", "c")]  # (a, n) lost n's every dim
    assert Decisions.from_json(d.to_json()) == d
    with torch.no_grad():
        m.supernet.beta.zero_()  # a dimension search that closes everything: one clear error, not a crash later
    m.positions = None
    m.next_stage(cfg)
    with pytest.raises(TrainingError, match="closed every dimension of every field .*lower search.eds_c"):
        m.derive(context(toy_spec))
