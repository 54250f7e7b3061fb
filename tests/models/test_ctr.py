import pytest
import torch

from trainer.models.build import build_model
from trainer.models.ctr import MODELS, ModelConfig
from trainer.models.layout import layout_for, stored_dim
from trainer.models.tables import FieldEmbeddings

MIXED = {"a": 3, "n": 0, "g": 5, "c": 8}  # odd dims, a dropped field


FIRST_ORDER = ["fm", "wide_deep", "deepfm"]


@pytest.mark.parametrize(
    "name, first_order_column",
    [(n, False) for n in sorted(MODELS)] + [(n, True) for n in FIRST_ORDER],
)
@pytest.mark.parametrize("storage", ["local", "sharded"])
def test_forward_backward_mixed_dims(name, first_order_column, storage, toy_spec, toy_batch, dist_env):
    from trainer.training import TrainConfig, wrap

    cfg = ModelConfig(name=name, dims=MIXED, mlp=[8, 8], first_order_column=first_order_column)
    model = build_model(toy_spec, cfg, device=torch.device("meta") if storage == "sharded" else None)
    assert model.embeddings.layout.fields == ("a", "g", "c")
    train, opt = wrap(model, TrainConfig(storage=storage, embedding_lr=0.1, lr=1e-2), dist_env, log=lambda _: None)
    losses = []
    for _ in range(30):
        loss, (_, logits, _) = train(toy_batch)
        assert logits.shape == (8,) and torch.isfinite(logits).all()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]  # the model learns the (tiny) training batch


def test_dropped_field_has_no_table_and_pooled_dims_are_logical(toy_spec, toy_batch):
    emb = FieldEmbeddings(toy_spec, MIXED)
    names = [c.name for c in emb.ebc.embedding_bag_configs()]
    assert names == ["t_a", "t_g", "t_c"]
    assert [c.embedding_dim for c in emb.ebc.embedding_bag_configs()] == [4, 8, 8]  # fused-kernel alignment
    out = emb(toy_batch.sparse_features)
    assert [o.shape[1] for o in out] == [3, 5, 8]


def test_bag_is_mean_pooled(toy_spec, toy_batch):
    emb = FieldEmbeddings(toy_spec, {"g": 4})
    w = emb.ebc.embedding_bags["t_g"].weight
    kjt = toy_batch.sparse_features.to_dict()["g"]
    (pooled,) = emb(toy_batch.sparse_features)
    for row, ids in enumerate(kjt.to_dense()):
        expected = w[ids].mean(0) if len(ids) else torch.zeros(4)
        assert torch.allclose(pooled[row], expected, atol=1e-6)


def test_layout_accounting(toy_spec):
    lay = layout_for(toy_spec, MIXED)
    assert lay.embedding_params == 8 * 3 + 4 * 5 + 3 * 8
    assert lay.embedding_bytes == 4 * (8 * stored_dim(3) + 4 * stored_dim(5) + 3 * stored_dim(8))


def test_all_fields_dropped_is_an_error(toy_spec):
    with pytest.raises(ValueError, match="dim 0"):
        build_model(toy_spec, ModelConfig(dims={n: 0 for n in toy_spec.names}))


def test_zero_padding_interaction_uses_shared_prefix():
    from trainer.models.blocks import fm_interaction, stack_zero_padded

    a, b = torch.randn(2, 3), torch.randn(2, 5)
    got = fm_interaction(stack_zero_padded([a, b], 5))
    assert torch.allclose(got, (a * b[:, :3]).sum(1), atol=1e-6)


UNIFORM = {"a": 4, "n": 4, "g": 4, "c": 4}  # equal dims: the one-view fast path of FieldEmbeddings.lookup


@pytest.mark.parametrize("dims", [MIXED, UNIFORM], ids=["mixed", "uniform"])
@pytest.mark.parametrize("name", FIRST_ORDER)
def test_first_order_column_computes_what_separate_tables_compute(name, dims, toy_spec, toy_batch):
    """Same weights laid out either way give the same logits; the column layout has one
    table per field (a dropped field keeps a 1-wide one) and no w_ tables."""
    sep = build_model(toy_spec, ModelConfig(name=name, dims=dims, mlp=[8, 8]))
    col = build_model(toy_spec, ModelConfig(name=name, dims=dims, mlp=[8, 8], first_order_column=True))
    assert col.linear is None
    widths = {c.name: c.embedding_dim for c in col.embeddings.ebc.embedding_bag_configs()}
    assert widths == {f"t_{f}": stored_dim(d + 1) for f, d in dims.items()}
    with torch.no_grad():
        for n, p in sep.named_parameters():
            if not n.startswith(("embeddings.", "linear.")):
                dict(col.named_parameters())[n].copy_(p + 0.1)
                p.add_(0.1)  # non-zero head and bias, so the comparison is not trivially 0 == 0
        for f in toy_spec.names:
            w = col.embeddings.ebc.embedding_bags[f"t_{f}"].weight
            w.normal_()
            d = dims[f]
            if d:
                sep.embeddings.ebc.embedding_bags[f"t_{f}"].weight[:, :d].copy_(w[:, :d])
            sep.linear.ebc.embedding_bags[f"w_{f}"].weight[:, 0].copy_(w[:, d])
    b = toy_batch
    assert torch.allclose(col(b.dense_features, b.sparse_features), sep(b.dense_features, b.sparse_features), atol=1e-5)
    # A caller that masks embeddings and scores them (iHAS) gets the first-order term too.
    embs = col.embeddings(b.sparse_features)
    assert torch.allclose(col.score(b.dense_features, b.sparse_features, embs),
                          sep.score(b.dense_features, b.sparse_features, embs), atol=1e-5)


@pytest.mark.parametrize("storage", ["local", "sharded"])
def test_first_order_column_starts_at_zero(storage, toy_spec, dist_env):
    from trainer.training import TrainConfig, wrap
    from trainer.unshard import unshard_into

    cfg = ModelConfig(name="deepfm", dims=MIXED, mlp=[8], init_scale=0.05, first_order_column=True)
    model = build_model(toy_spec, cfg, device=torch.device("meta") if storage == "sharded" else None)
    train, _ = wrap(model, TrainConfig(storage=storage), dist_env, log=lambda _: None)
    local = unshard_into(train, build_model(toy_spec, cfg))
    for f in toy_spec.names:
        w = local.embeddings.ebc.embedding_bags[f"t_{f}"].weight
        d = MIXED[f]
        assert torch.all(w[:, d] == 0)
        if d:
            assert 0 < w[:, :d].abs().max() <= 0.05


def test_first_order_column_accounting(toy_spec):
    from trainer.jobs.train import table_stats

    for column in (False, True):
        model = build_model(toy_spec, ModelConfig(name="deepfm", dims=MIXED, first_order_column=column))
        rows = {f.name: f.num_embeddings for f in toy_spec.fields}
        stats = table_stats(model)
        assert stats["embedding_params"] == layout_for(toy_spec, MIXED).embedding_params + sum(rows.values())
        widths = {f: stored_dim(MIXED[f] + 1) for f in rows} if column else None
        expected = (sum(rows[f] * widths[f] for f in rows) if column
                    else sum(rows[f] * (stored_dim(MIXED[f]) if MIXED[f] else 0) + rows[f] * 4 for f in rows))
        assert stats["embedding_bytes"] == 4 * expected


def test_dpq_refuses_first_order_column(toy_spec):
    from trainer.models.dpq import require_separate_first_order

    with pytest.raises(ValueError, match="first_order_column"):
        require_separate_first_order(ModelConfig(first_order_column=True))


@pytest.mark.parametrize("first_order_column", [False, True])
def test_uniform_fast_path_matches_per_field_slices(first_order_column, toy_spec, toy_batch):
    emb = FieldEmbeddings(toy_spec, UNIFORM, first_order_column=first_order_column)
    assert emb._uniform_order is not None
    with torch.no_grad():
        for t in emb.ebc.embedding_bags.values():
            t.weight.normal_()
    fast, fast_fo = emb.lookup(toy_batch.sparse_features)
    emb._uniform_order = None
    slow, slow_fo = emb.lookup(toy_batch.sparse_features)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow)) and len(fast) == 4
    assert (fast_fo is None and slow_fo is None) or torch.allclose(fast_fo, slow_fo, atol=1e-6)


def test_dropped_field_with_equal_widths_takes_the_slice_path(toy_spec):
    # dims 3 and a dropped field's first-order table are both 4 wide: widths are equal but
    # the tables are not one per kept field, so the one-view path must not be used.
    emb = FieldEmbeddings(toy_spec, {"a": 3, "n": 0, "g": 3, "c": 3}, first_order_column=True)
    assert {c.embedding_dim for c in emb.ebc.embedding_bag_configs()} == {4}
    assert emb._uniform_order is None


@pytest.mark.parametrize("name", ["fm", "deepfm", "ipnn"])
def test_kept_pairs_prune_the_pairwise_interaction(name, toy_spec, toy_batch):
    """Every pair kept = the unpruned model; a pruned FM term is the sum over the kept pairs only."""
    from trainer.decisions import Interaction

    cfg = ModelConfig(name=name, embedding_dim=4, mlp=[4])
    names = toy_spec.names
    every = [Interaction((a, b)) for i, a in enumerate(names) for b in names[i + 1:]]
    torch.manual_seed(0)
    full = build_model(toy_spec, cfg).eval()
    torch.manual_seed(0)
    same = build_model(toy_spec, cfg, interactions=tuple(every)).eval()
    same.load_state_dict(full.state_dict())
    x = toy_batch.dense_features, toy_batch.sparse_features
    with torch.no_grad():
        assert torch.allclose(same(*x), full(*x), atol=1e-6)  # pair sum vs ½((Σe)² − Σe²): float rounding only
    kept = (Interaction((names[0], names[2])),)
    pruned = build_model(toy_spec, cfg, interactions=kept).eval()
    assert pruned.pair_index.tolist() == [[0], [2]]
    if name == "fm":
        with torch.no_grad():
            embs, _ = pruned.embeddings.lookup(toy_batch.sparse_features)
            want = (embs[0] * embs[2]).sum(dim=1)
            assert torch.allclose(pruned.head(None, embs), want, atol=1e-6)
    assert "pair_index" not in pruned.state_dict()  # architecture, not a weight


@pytest.mark.parametrize("name", ["fm", "deepfm", "ipnn"])
def test_pair_weights_scale_each_kept_interaction(name, toy_spec, toy_batch):
    """AutoFIS's retrain: each kept pair's inner product times its learned weight (in the FM
    sum, or as the IPNN product fed to the MLP); weights round-trip through the decisions;
    a kept pair without a weight is refused."""
    from trainer.decisions import Decisions, DecisionsError, Interaction, uniform

    cfg = ModelConfig(name=name, embedding_dim=4, mlp=[4])
    names = toy_spec.names
    kept = (Interaction((names[0], names[2]), weight=0.5), Interaction((names[1], names[3]), weight=-2.0))
    torch.manual_seed(0)
    model = build_model(toy_spec, cfg, interactions=kept).eval()
    assert dict(model.named_parameters())["pair_weight"].tolist() == [0.5, -2.0]  # a trained weight, served with the model
    with torch.no_grad():
        embs, _ = model.embeddings.lookup(toy_batch.sparse_features)
        products = torch.stack([0.5 * (embs[0] * embs[2]).sum(1), -2.0 * (embs[1] * embs[3]).sum(1)], dim=1)
        if name == "ipnn":
            x = torch.cat([torch.cat(embs, 1), products], dim=1)
            assert torch.allclose(model.head(None, embs), model.deep(x).squeeze(1), atol=1e-6)  # float32 sum order
        elif name == "fm":
            assert torch.allclose(model.head(None, embs), products.sum(1), atol=1e-6)
    d = uniform("w", names, {n: 4 for n in names}, 10).replace(interactions=kept)
    assert Decisions.from_json(d.to_json()).interactions == kept
    with pytest.raises(DecisionsError, match="interaction weights"):
        d.replace(interactions=(kept[0], Interaction((names[1], names[3]))))
    with pytest.raises(ValueError, match="no weight for kept pairs"):
        build_model(toy_spec, cfg, interactions=(Interaction((names[0], names[2])),)).weight_pairs({})


def test_a_meta_built_model_starts_from_its_values_once_materialized(toy_spec):
    """Sharded storage builds on the meta device and DMP materializes with to_empty +
    reset_parameters: the bias starts at 0 and the pair weights at their given values, not
    at whatever memory held."""
    from torchrec.distributed.utils import init_parameters

    from trainer.decisions import Interaction

    kept = (Interaction(("a", "c"), weight=0.25), Interaction(("g", "c"), weight=-1.5))
    model = build_model(toy_spec, ModelConfig(name="fm", embedding_dim=4), device=torch.device("meta"), interactions=kept)
    init_parameters(model, torch.device("cpu"))
    assert model.bias.tolist() == [0.0]
    assert sorted(model.pair_weight.tolist()) == [-1.5, 0.25]


@pytest.mark.parametrize("name", ["fm", "ipnn"])
def test_higher_order_interactions_are_products_summed_over_dims(name, toy_spec, toy_batch):
    from trainer.decisions import Interaction

    cfg = ModelConfig(name=name, embedding_dim=4, mlp=[4])
    kept = (Interaction(("a", "c")), Interaction(("c", "g", "a")), Interaction(("a", "n", "g", "c")))
    torch.manual_seed(0)
    model = build_model(toy_spec, cfg, interactions=kept).eval()
    assert model.high_orders == (3, 4) and model.n_higher == 2
    assert model.order3_index.tolist() == [[0], [2], [3]]  # field positions a, g, c sorted
    with torch.no_grad():
        embs, _ = model.embeddings.lookup(toy_batch.sparse_features)
        a, n, g, c = embs
        by_hand = [(a * c).sum(1), (a * g * c).sum(1), (a * n * g * c).sum(1)]
        if name == "fm":
            assert torch.allclose(model.head(None, embs), sum(by_hand), atol=1e-6)  # float32 sum order
        else:
            x = torch.cat([torch.cat(embs, 1), torch.stack(by_hand, 1)], dim=1)
            assert torch.allclose(model.head(None, embs), model.deep(x).squeeze(1), atol=1e-6)


def test_kept_pairs_on_a_model_without_pairwise_interactions_are_refused(toy_spec):
    from trainer.decisions import Interaction

    with pytest.raises(ValueError, match="no pairwise interactions"):
        build_model(toy_spec, ModelConfig(name="mlp", mlp=[4]), interactions=(Interaction(("a", "g")),))


def test_one_kept_interaction_gives_plain_row_major_index_buffers(toy_spec):
    """A search that keeps exactly one pair (or one triple) must not give a transposed-view
    index: DDP's buffer broadcast refuses to write into a [p, 1] tensor with strides (1, p)
    (2-process retrains crashed on it)."""
    from trainer.decisions import Interaction
    from trainer.models.aim import AIMModel

    m = build_model(toy_spec, ModelConfig(name="deepfm", embedding_dim=4, mlp=[8]),
                    interactions=[Interaction(("a", "c")), Interaction(("a", "g", "c"))])
    assert m.pair_index.tolist() == [[0], [3]] and m.pair_index.stride() == (1, 1)
    assert m.order3_index.stride() == (1, 1)
    aim = AIMModel(toy_spec, ModelConfig(name="fm", embedding_dim=4), [(("a", "c"), "inner")])
    assert all(t.index.stride() == (1, 1) for t in aim.terms)
