"""iHAS-shared: one table set for the router and every cluster head."""

from dataclasses import replace

import pytest
import torch

from trainer.decisions import ClusterDecision, Decisions, DecisionsError, FieldDecision, RouterDecision
from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.search.ihas.gates import FieldGates, GateMode, InstanceGates, MLPGates, SharedGates
from trainer.search.ihas.shared import SharedTablesModel, column_means, shared_warm_state, union_columns
from trainer.search.ihas.supernet import GatedSupernet, Router

D = 4
# field "c" column 3 and all of "n" are kept by no cluster: they must leave the table
KEPT = [{"a": [0, 2, 3], "n": [], "g": [1], "c": [0, 1]},
        {"a": [1], "n": [], "g": [1, 2], "c": [0, 2]}]


def _decisions(features="masked", k=2):
    width = 4 * D
    torch.manual_seed(1)
    centroids = torch.randn(k, width).mul(0.05).tolist()
    clusters = tuple(ClusterDecision(c, {f: FieldDecision(len(cols), tuple(cols)) for f, cols in KEPT[c].items()}) for c in range(k))
    return Decisions("ihas_shared", clusters, router=RouterDecision(centroids, 10, 0.5, features), shared_tables=True,
                     details={"embedding_dim": D})


def _supernet(toy_spec, gates_cls, dense_input=False):
    cfg = ModelConfig(name="mlp", embedding_dim=D, mlp=[8, 4], dense_input=dense_input)
    torch.manual_seed(0)
    base = build_model(toy_spec, cfg, dims={n: D for n in toy_spec.names})
    kw = {"units": 4} if gates_cls in (FieldGates, MLPGates) else {}
    gates = gates_cls(4 * D, init_prob=0.5, **kw)
    with torch.no_grad():
        for p in [*base.parameters(), *gates.parameters()]:
            p.normal_(0, 0.5)
    return cfg, GatedSupernet(base, gates)


def _fill_dropped_columns(supernet, decisions, fill):
    """The search-stage tables with every column no cluster keeps set to its fill value."""
    union = union_columns(decisions)
    with torch.no_grad():
        for i, (f, t) in enumerate(supernet.base.embeddings.ebc.embedding_bags.items()):
            keep = torch.zeros(t.weight.shape[1], dtype=torch.bool)
            keep[union[f.removeprefix("t_")]] = True
            keep[D:] = True  # alignment padding
            cols = torch.nonzero(~keep).flatten()
            t.weight[:, cols] = fill[i * D + cols]


@pytest.mark.parametrize("gates_cls", [InstanceGates, FieldGates, MLPGates, SharedGates])
@pytest.mark.parametrize("features", ["masked", "mask", "prob"])
@pytest.mark.parametrize("filled", [False, True])
def test_routes_like_the_search_router_and_scores_like_the_masked_supernet(gates_cls, features, filled, toy_spec, toy_batch):
    cfg, supernet = _supernet(toy_spec, gates_cls)
    decisions = _decisions(features)
    # the bag field "g" keeps 0: an empty bag pools to 0 whatever its rows hold
    fill = torch.linspace(-1, 1, 4 * D) * torch.tensor([1.0, 1.0, 0.0, 1.0]).repeat_interleave(D) if filled else None
    model = SharedTablesModel(toy_spec, cfg, decisions, supernet.gates, fill=fill)
    model.load_state_dict(shared_warm_state(supernet.base, model), strict=True)
    # the router reads the cut table, so it equals the search's router on tables whose
    # dropped columns hold their fill value (0 without one)
    _fill_dropped_columns(supernet, decisions, fill if filled else torch.zeros(4 * D))
    router = Router(supernet, torch.tensor(decisions.router.centroids), features)
    dense, sparse = toy_batch.dense_features, toy_batch.sparse_features
    logits, clusters = model.score_all(dense, sparse)
    assert torch.equal(clusters, router(dense, sparse))
    embs, _ = supernet.base.embeddings.lookup(sparse)
    for c, kept in enumerate(KEPT):
        masks = [torch.zeros(D).index_fill_(0, torch.tensor(kept[f], dtype=torch.long), 1.0) for f in toy_spec.names]
        want = supernet.base.score(dense, sparse, [e * m for e, m in zip(embs, masks)])
        assert torch.allclose(logits[:, c], want, atol=1e-5), (c, logits[:, c], want)  # float32 sums in another order
    assert torch.equal(model(dense, sparse), logits.gather(1, clusters[:, None]).squeeze(1))


def test_one_table_per_field_holds_only_the_columns_some_cluster_keeps(toy_spec):
    cfg, supernet = _supernet(toy_spec, InstanceGates)
    model = SharedTablesModel(toy_spec, cfg, _decisions(), supernet.gates)
    widths = {c.name: c.embedding_dim for c in model.embeddings.ebc.embedding_bag_configs()}
    assert widths == {"t_a": 4, "t_g": 4, "t_c": 4}  # a: 4 kept columns; g: 2 → padded to 4; c: 3 → 4; n: none
    assert model.embeddings.layout.dims == (4, 2, 3)
    assert model.router.gates.first.in_features == 9  # the gates read the kept columns only
    tables = [n for n, _ in model.named_parameters() if "embedding_bags" in n]
    assert len(tables) == 3  # one table set, whatever the number of clusters


def test_tables_and_heads_train_the_router_stays(toy_spec, toy_batch):
    cfg, supernet = _supernet(toy_spec, InstanceGates, dense_input=True)
    model = SharedTablesModel(toy_spec, cfg, _decisions(), supernet.gates)
    model.load_state_dict(shared_warm_state(supernet.base, model))
    model(toy_batch.dense_features, toy_batch.sparse_features).sum().backward()
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters() if p.requires_grad}
    assert all(grads[n] for n in grads if "embedding_bags" in n or n.startswith("heads.0.0"))
    assert not any(p.requires_grad for p in model.router.gates.parameters())


def test_shared_tables_round_trip_and_need_a_router():
    d = _decisions()
    back = Decisions.from_json(d.to_json())
    assert back == d and back.shared_tables
    old = d.to_json()
    del old["shared_tables"]  # a record written before the flag existed
    assert Decisions.from_json(old).shared_tables is False
    with pytest.raises(DecisionsError, match="shared tables need a router"):
        Decisions("x", d.clusters[:1], shared_tables=True)


def test_gates_are_put_in_deterministic_mode_by_the_router_only(toy_spec):
    _, supernet = _supernet(toy_spec, InstanceGates)
    supernet.gates.mode = GateMode.STOCHASTIC
    SharedTablesModel(toy_spec, ModelConfig(name="mlp", embedding_dim=D, mlp=[8, 4]), _decisions(), supernet.gates)
    assert supernet.gates.mode is GateMode.STOCHASTIC  # the search's gates are copied, never changed


def test_heads_only_training_leaves_the_tables_and_the_routing_alone(toy_spec, toy_batch):
    cfg, supernet = _supernet(toy_spec, InstanceGates)
    model = SharedTablesModel(toy_spec, cfg, _decisions(), supernet.gates, train_tables=False)
    model.load_state_dict(shared_warm_state(supernet.base, model))
    model(toy_batch.dense_features, toy_batch.sparse_features).sum().backward()
    tables = [p for n, p in model.named_parameters() if "embedding_bags" in n]
    assert tables and all(p.grad is None for p in tables)
    assert all(p.grad is not None for p in model.heads.parameters())


def test_column_means_are_the_train_means_of_single_id_fields(toy_spec, toy_batch):
    _, supernet = _supernet(toy_spec, InstanceGates)
    sparse = toy_batch.sparse_features
    ids = sparse["a"].values()
    counts = {f.name: torch.zeros(f.num_embeddings) for f in toy_spec.fields}
    counts["a"] = torch.bincount(ids, minlength=toy_spec.fields[0].num_embeddings).float()
    got = column_means(supernet.base, {k: v.numpy() for k, v in counts.items()})
    want = supernet.base.embeddings.lookup(sparse)[0][0].mean(dim=0)  # field "a": one id per row
    assert got.shape == (4 * D,) and torch.allclose(got[:D], want, atol=1e-6)


@pytest.mark.parametrize("features", ["masked", "ids"])
@pytest.mark.parametrize("dense_input", [False, True])
def test_served_program_fuses_the_heads_and_scores_as_the_trained_model(features, dense_input, toy_spec, toy_batch):
    """The exported program (one block-diagonal MLP for all heads, the router reading the
    stored lookup) gives the trained model's logits and clusters, holds none of the training
    model's own heads, and its first layer is one matmul over every stored column."""
    import numpy as np

    from trainer.search.ihas.fused import FusedRouted
    from trainer.search.ihas.mixture import Mixture

    cfg, supernet = _supernet(toy_spec, InstanceGates, dense_input=dense_input)
    decisions = _decisions(features)
    mixture = None
    if features == "ids":
        rng = np.random.default_rng(0)
        mixture = Mixture(np.log([0.3, 0.7]), [np.log(rng.dirichlet([1.0] * f.num_embeddings, 2).T) for f in toy_spec.fields], 0.0, 1)
    model = SharedTablesModel(toy_spec, cfg, decisions, supernet.gates, mixture=mixture)
    model.load_state_dict(shared_warm_state(supernet.base, model))
    with torch.no_grad():
        for h in model.heads:
            for p in h.parameters():
                p.normal_(0, 0.5)
    dense, sparse = toy_batch.dense_features, toy_batch.sparse_features
    want_logits, want_clusters = model.score_all(dense, sparse)
    program = model.routed_program()
    assert isinstance(program, FusedRouted)
    logits, clusters = program(dense, sparse)
    assert torch.equal(clusters, want_clusters) and len(set(clusters.tolist())) == 2
    assert torch.allclose(logits, want_logits, atol=1e-6)  # the same sums with zero terms added: float32 order only
    # the tables, the fused MLP and (routing by gates) the router: the training heads stay behind
    assert {n.split(".")[0] for n, _ in program.named_parameters()} == {"ebc", "heads"} | ({"router"} if features == "masked" else set())
    linears = [m for m in program.heads if isinstance(m, torch.nn.Linear)]
    stored = sum(c.embedding_dim for c in model.embeddings.ebc.embedding_bag_configs())
    assert len(linears) == len(cfg.mlp) + 1 and linears[0].in_features == stored + model.n_dense
    assert linears[-1].out_features == 2


@pytest.mark.parametrize("dense_input", [False, True])
def test_cluster_models_and_the_id_router_fuse_into_one_program(dense_input, toy_spec, toy_batch):
    """Per-cluster MLP models (own tables, own dims, a field one cluster drops) and the id
    mixture's router as one program: the same clusters and each row's own model's logit."""
    import numpy as np

    from trainer.search.ihas.mixture import MixtureRouter

    cfg = ModelConfig(name="mlp", embedding_dim=D, mlp=[8, 4], dense_input=dense_input)
    torch.manual_seed(0)
    models = [build_model(toy_spec, cfg, dims={"a": 3, "n": 0, "g": 1, "c": 2}),
              build_model(toy_spec, cfg, dims={"a": 1, "n": 4, "g": 2, "c": 0})]
    for m in models:
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.5)
        m.eval()
    rng = np.random.default_rng(0)
    router = MixtureRouter(toy_spec, [np.log(rng.dirichlet([1.0] * f.num_embeddings, 2).T) for f in toy_spec.fields],
                           torch.log(torch.tensor([0.4, 0.6])))
    program = router.fuse(models)
    dense, sparse = toy_batch.dense_features, toy_batch.sparse_features
    logits, clusters = program(dense, sparse)
    want = router(dense, sparse)
    assert torch.equal(clusters, want) and len(set(want.tolist())) == 2
    for k, m in enumerate(models):
        assert torch.allclose(logits[:, k], m(dense, sparse), atol=1e-6)  # float32 summation order only
    # every table once: each cluster's kept fields and the router's, nothing else
    names = sorted(c.name for c in program.ebc.embedding_bag_configs())
    assert names == ["c0_t_a", "c0_t_c", "c0_t_g", "c1_t_a", "c1_t_g", "c1_t_n", "m_a", "m_c", "m_g", "m_n"]
    assert router.fuse([models[0], build_model(toy_spec, replace(cfg, name="fm"), dims={n: D for n in toy_spec.names})]) is None
