"""AutoFIS: the gated, normalised interactions against a hand computation, derive, and the
kept pairs scored against planted ones."""

import pytest
import torch

from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.search.autofis.method import AutoFIS, AutoFISConfig
from trainer.search.planted import planted_scores
from trainer.search.interface import SearchContext
from trainer.training import TrainConfig


def method_for(spec, name: str, centred: bool = False) -> AutoFIS:
    torch.manual_seed(0)
    ctx = SearchContext(spec, ModelConfig(name=name, embedding_dim=4, mlp=[8]), TrainConfig(), None, {}, 100, None, None,
                        lambda _: None)
    m = AutoFIS(AutoFISConfig(alpha_init=0.3, centred=centred), ctx)
    m.build()
    return m


def test_batch_norm_has_no_scale_or_shift(toy_spec):
    net = method_for(toy_spec, "deepfm").supernet
    assert net.bn.weight is None and net.bn.bias is None and not net.bn.affine
    assert not [n for n, _ in net.named_parameters() if n.startswith("bn.")]


@pytest.mark.parametrize("name", ["fm", "deepfm", "ipnn"])
def test_logit_is_the_gated_normalised_sum_by_hand(toy_spec, toy_batch, name):
    m = method_for(toy_spec, name)
    net = m.supernet.eval()
    p = net.pairs.shape[1]
    with torch.no_grad():
        net.alpha.copy_(torch.linspace(-1, 1, p))
        net.bn.running_mean.copy_(torch.linspace(0, 0.1, p))
        net.bn.running_var.copy_(torch.linspace(0.5, 2, p))
        got = net(toy_batch.dense_features, toy_batch.sparse_features)
        base = net.base
        embs, first = base.embeddings.lookup(toy_batch.sparse_features)
        width = max(e.shape[1] for e in embs)
        padded = [torch.nn.functional.pad(e, (0, width - e.shape[1])) for e in embs]
        inner = torch.stack([(padded[i] * padded[j]).sum(1) for i, j in net.pairs.T.tolist()], dim=1)
        gated = net.alpha * (inner - net.bn.running_mean) / torch.sqrt(net.bn.running_var + net.bn.eps)
        concat = torch.cat(embs, dim=1)
        if name == "ipnn":
            want = base.deep(torch.cat([concat, gated], dim=1)).squeeze(1) + base.bias
        else:
            want = gated.sum(1) + base.bias + base.linear(toy_batch.sparse_features)
            if name == "deepfm":
                want = want + base.deep(concat).squeeze(1)
    assert torch.allclose(got, want, atol=1e-6)  # float32 sums in a different order


def test_centred_pair_terms_ignore_a_shift_of_every_embedding_of_a_field(toy_spec, toy_batch):
    """A constant added to every embedding of a field moves the uncentred products by
    ⟨e_i, c⟩, a function of field i alone (a main effect); the centred ones do not move,
    in training (batch mean) and in eval (running mean moved by the same constant)."""
    sparse = toy_batch.sparse_features
    out = {}
    for centred in (False, True):
        net = method_for(toy_spec, "fm", centred).supernet
        table = net.base.embeddings.ebc.embedding_bags["t_c"].weight  # one id per row: the pooled row is the table row
        terms = []
        for shift in (0.0, 0.7):
            with torch.no_grad():
                table.add_(shift)
            embs, _ = net.base.embeddings.lookup(sparse)
            net.train()
            train = net.interactions(embs).detach()
            if centred:
                net.field_mean.copy_(torch.stack([e.mean(0) for e in embs]))
            terms.append((train, net.eval().interactions(embs).detach()))
        out[centred] = terms
    # pairs with field "c" (index 3): the shift moves them unless centred
    with_c = [k for k, (i, j) in enumerate(method_for(toy_spec, "fm").supernet.pairs.T.tolist()) if 3 in (i, j)]
    for mode in (0, 1):
        assert torch.allclose(out[True][0][mode], out[True][1][mode], atol=1e-5)
        assert not torch.allclose(out[False][0][mode][:, with_c], out[False][1][mode][:, with_c], atol=1e-3)


def test_a_zero_gate_closes_its_interaction_and_derive_drops_it(toy_spec, toy_batch):
    m = method_for(toy_spec, "fm")
    net = m.supernet.eval()
    with torch.no_grad():
        net.alpha.zero_()
        net.alpha[1] = 0.7
        only = net(toy_batch.dense_features, toy_batch.sparse_features)
        net.alpha[2] = 0.0  # already zero: closing it again changes nothing
        assert torch.equal(only, net(toy_batch.dense_features, toy_batch.sparse_features))
    ctx = SearchContext(toy_spec, m.model_cfg, TrainConfig(), None, {}, 100, None, None, lambda _: None)
    d = m.derive(ctx)
    assert [tuple(i.fields) for i in d.interactions] == [m.pair_names()[1]]
    assert d.details["kept"] == 1 and d.details["searched"] == 6
    assert [i.weight for i in d.interactions] == [pytest.approx(0.7)]  # the paper's retrain starts from α
    retrained = build_model(toy_spec, m.model_cfg, interactions=d.interactions)
    assert retrained.pair_index.shape == (2, 1)
    assert retrained.pair_weight.tolist() == [pytest.approx(0.7)] and retrained.pair_weight.requires_grad


def test_planted_scores():
    planted = [["A", "B"], ["C", "D"], ["A", "E", "F"]]
    s = planted_scores([("B", "A"), ("A", "C"), ("E", "F")], planted)
    assert (s["true_positives"], s["kept"], s["planted"]) == (1, 3, 2)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == 0.5 and s["kept_inside_planted_higher_order"] == 1
    t = planted_scores([("A", "F", "E"), ("A", "B", "C")], planted, order=3)
    assert (t["true_positives"], t["precision"], t["recall"]) == (1, 0.5, 1.0)
    assert planted_scores([], planted)["precision"] is None


def test_only_fis_base_models_are_accepted():
    from types import SimpleNamespace

    assert AutoFIS.check_config(SimpleNamespace(model=ModelConfig(name="dcn")))
    assert not AutoFIS.check_config(SimpleNamespace(model=ModelConfig(name="fm")))
    assert AutoFISConfig(alpha_init=0.0).validate()
