"""iHAS-warm: a cluster model cut from the supernet scores like the supernet under the cluster's mask."""

import pytest
import torch

from trainer.models.build import build_model
from trainer.models.ctr import MODELS, ModelConfig
from trainer.search.ihas.warm_start import WARM_MODELS, supports_warm_start, warm_start_state

D = 4
KEPT = {"a": [0, 2, 3], "n": [], "g": [1], "c": [0, 1, 2, 3]}  # a dropped field, unordered gaps


def _models(toy_spec, name, first_order_column=False, dense_input=False):
    cfg = ModelConfig(name=name, embedding_dim=D, mlp=[8, 4], first_order_column=first_order_column, dense_input=dense_input)
    torch.manual_seed(0)
    base = build_model(toy_spec, cfg, dims={n: D for n in toy_spec.names})
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.5)
    target = build_model(toy_spec, cfg, dims={f: len(k) for f, k in KEPT.items()})
    return base, target


@pytest.mark.parametrize("name, first_order_column, dense_input",
                         [("mlp", False, False), ("mlp", False, True), ("wide_deep", False, False), ("wide_deep", True, True)])
def test_warm_started_cluster_model_scores_like_the_masked_supernet(name, first_order_column, dense_input, toy_spec, toy_batch):
    base, target = _models(toy_spec, name, first_order_column, dense_input)
    target.load_state_dict(warm_start_state(base, target, KEPT), strict=True)
    dense, sparse = toy_batch.dense_features, toy_batch.sparse_features
    masks = [torch.zeros(D).index_fill_(0, torch.tensor(KEPT[f], dtype=torch.long), 1.0) for f in toy_spec.names]
    embs, first_order = base.embeddings.lookup(sparse)
    want = base.score(dense, sparse, [e * m for e, m in zip(embs, masks)], first_order)
    got = target(dense, sparse)
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert want.abs().max() > 0.1  # the weights are not trivially zero


def test_interaction_heads_are_refused(toy_spec):
    base, target = _models(toy_spec, "deepfm")
    with pytest.raises(ValueError, match="MLP-only head"):
        warm_start_state(base, target, KEPT)


def test_kept_columns_must_match_the_dims(toy_spec):
    base, target = _models(toy_spec, "mlp")
    with pytest.raises(ValueError, match="do not match"):
        warm_start_state(base, target, {**KEPT, "a": [0]})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_warm_models_are_exactly_the_mlp_only_heads(name, toy_spec):
    assert supports_warm_start(build_model(toy_spec, ModelConfig(name=name, mlp=[4]))) == (name in WARM_MODELS)


def test_warm_variant_with_an_interaction_model_is_a_config_error(tmp_path):
    from trainer.config import ConfigError
    from trainer.jobs.search import load_experiment

    cfg = tmp_path / "x.toml"
    cfg.write_text('[model]\nname = "deepfm"\n[search]\nmethod = "ihas"\n[variants]\nwarm = true\n')
    with pytest.raises(ConfigError, match="variants.warm.*deepfm"):
        load_experiment(str(cfg), [])
