import pytest
import torch

from trainer.models.ctr import MODELS, ModelConfig, build_model
from trainer.models.tables import FieldEmbeddings, layout_for, stored_dim

MIXED = {"a": 3, "n": 0, "g": 5, "c": 8}  # odd dims, a dropped field


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("storage", ["local", "sharded"])
def test_forward_backward_mixed_dims(name, storage, toy_spec, toy_batch, dist_env):
    from trainer.training import TrainConfig, wrap

    cfg = ModelConfig(name=name, dims=MIXED, mlp=[8, 8])
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
