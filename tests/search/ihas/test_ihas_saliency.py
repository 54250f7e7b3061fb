"""The saliency clustering variant: field saliency is the directional derivative of the
supernet's logit along each field's embedding, per-id tables average it over the training
rows, and the config refuses a scale option the variant does not use."""

import numpy as np
import pytest
import torch

from trainer.data.batches import iterate_batches
from trainer.data.config import DataConfig, load_dataset
from trainer.models.ctr import ModelConfig
from trainer.search.ihas.method import IHAS, IHASConfig
from trainer.search.ihas.saliency import SaliencyFeatures, row_saliency, saliency_tables
from trainer.search.interface import SearchContext
from trainer.training import TrainConfig


@pytest.fixture(scope="module")
def supernet_and_ds(tmp_path_factory, dist_env):
    cfg = DataConfig(source="synthetic", rows=2000, n_categorical=4, n_numerical=0, vocab_min=5, vocab_max=40,
                     signal_fields_per_group=2, cache_dir=str(tmp_path_factory.mktemp("cache")))
    ds = load_dataset(cfg, log=lambda _: None)
    ctx = SearchContext.of(ds, ModelConfig(name="mlp", embedding_dim=4, mlp=[4]), TrainConfig(eval_batch_size=256),
                           None, dist_env, lambda _: None)
    method = IHAS(IHASConfig(), ctx)
    torch.manual_seed(0)
    net = method.build()
    with torch.no_grad():
        for t in net.base.embeddings.ebc.embedding_bags.values():
            t.weight.normal_(0, 1.0)
    method.set_phase("eval")
    return net, ds


def test_saliency_is_the_logit_derivative_along_each_field(supernet_and_ds):
    """s_f = |Σ_j e_fj ∂z/∂e_fj|, the derivative of z along e_f, recomputed in forward mode
    (torch.func.jvp with tangent e_f) against the reverse-mode value; both are exact, so
    they differ only by float32 summation order."""
    net, ds = supernet_and_ds
    batch = next(iterate_batches(ds, "train", 64, shuffle=False, seed=0, epoch=0))
    sal = row_saliency(net, batch.dense_features, batch.sparse_features)
    emb = torch.cat(net.base.embeddings(batch.sparse_features), dim=1).detach()
    mask, _ = net.gates(emb)

    def z(e):
        return net.base.score(batch.dense_features, batch.sparse_features, list(torch.split(e * mask, net.split_sizes, dim=1)))

    start = 0
    for f, width in enumerate(net.split_sizes):
        tangent = torch.zeros_like(emb)
        tangent[:, start:start + width] = emb[:, start:start + width]
        _, along = torch.func.jvp(z, (emb,), (tangent,))
        assert torch.allclose(sal[:, f], along.abs(), rtol=1e-4, atol=1e-7)
        start += width
    assert (sal[:, 0] > 0).any()


def test_per_id_tables_average_the_rows_holding_each_id(supernet_and_ds):
    net, ds = supernet_and_ds
    tables = saliency_tables(net, ds.spec, ds, 256)
    sal, ids = [], []
    for b in iterate_batches(ds, "train", 256, shuffle=False, seed=0, epoch=0):
        sal.append(row_saliency(net, b.dense_features, b.sparse_features).numpy())
        jt = b.sparse_features.to_dict()
        ids.append(np.stack([jt[n].values().numpy() for n in ds.spec.names], 1))
    sal, ids = np.concatenate(sal), np.concatenate(ids)
    for f, table in enumerate(tables):
        seen = np.unique(ids[:, f])
        for i in seen:
            assert table[i] == pytest.approx(sal[ids[:, f] == i, f].mean(), rel=1e-5)
        unseen = np.setdiff1d(np.arange(len(table)), seen)
        assert unseen.size > 0  # id 0 (out of vocabulary) is never drawn
        assert np.allclose(table[unseen], sal[:, f].mean(), rtol=1e-5)
    # served features: the log of the row's ids' values, looked up in TorchRec tables
    feats = SaliencyFeatures(ds.spec, tables)
    b = next(iterate_batches(ds, "train", 32, shuffle=False, seed=0, epoch=0))
    jt = b.sparse_features.to_dict()
    want = np.stack([np.log(tables[f][jt[n].values().numpy()]) for f, n in enumerate(ds.spec.names)], 1)
    assert np.allclose(feats(b.sparse_features).detach().numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("cluster_on", ["saliency", "ids"])
def test_row_statistics_refuse_a_scale_they_do_not_use(cluster_on):
    problems = IHASConfig(cluster_on=cluster_on, cluster_scale="field").validate()
    assert any("scales its features itself" in p for p in problems)
    assert IHASConfig(cluster_on=cluster_on).validate() == []
