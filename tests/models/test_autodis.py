"""AutoDis and the raw-scalar embedding against hand computations; gradients; missing values."""

import math

import pytest
import torch

from serving.encodings import Encoding
from serving.features import FeatureSpec, Field
from trainer.decisions import AutoDisSettings, ClusterDecision, Decisions, FieldDecision, uniform
from trainer.models.autodis import AutoDis, NumericalEmbeddings
from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig

# float32 softmax / einsum against float64 hand sums: a few ulps of values of order 1
TOL = 1e-6


def _autodis(aggregation="weighted", temperature=1.0, top_k=2, projection="linear") -> AutoDis:
    settings = AutoDisSettings(buckets=3, temperature=temperature, aggregation=aggregation, top_k=top_k, projection=projection)
    m = AutoDis(1, 2, settings, init_scale=0.1)
    with torch.no_grad():
        m.w.copy_(torch.tensor([[1.0, -0.5, 2.0]]))
        m.meta.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]]]))
    return m


def _hand_probs(x: float, tau: float) -> list[float]:
    logits = [1.0 * x / tau, -0.5 * x / tau, 2.0 * x / tau]
    z = sum(math.exp(v) for v in logits)
    return [math.exp(v) / z for v in logits]


@pytest.mark.parametrize("tau", [1.0, 0.25, 4.0])
def test_softmax_over_buckets_with_temperature(tau):
    m = _autodis(temperature=tau)
    p = m.probabilities(torch.tensor([[0.7]]))[0, 0]
    assert torch.allclose(p.double(), torch.tensor(_hand_probs(0.7, tau), dtype=torch.float64), atol=TOL)


def test_lower_temperature_sharpens_the_discretization():
    x = torch.tensor([[0.7]])
    assert _autodis(temperature=0.1).probabilities(x).max() > _autodis(temperature=10.0).probabilities(x).max()


@pytest.mark.parametrize("x", [-1.3, 0.4, 2.0])
def test_each_aggregation_matches_the_hand_computation(x):
    meta = [[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]]
    p = _hand_probs(x, 1.0)
    order = sorted(range(3), key=lambda h: -p[h])
    want = {
        "max": meta[order[0]],
        "topk": [meta[order[0]][j] + meta[order[1]][j] for j in range(2)],
        "weighted": [sum(p[h] * meta[h][j] for h in range(3)) for j in range(2)],
    }
    for aggregation, expected in want.items():
        got = _autodis(aggregation).forward(torch.tensor([[x]]))[0, 0]
        assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=TOL), aggregation


def test_leaky_skip_projection_is_the_papers_network():
    m = _autodis(projection="leaky_skip")
    with torch.no_grad():
        m.mix.copy_(torch.arange(9.0).reshape(1, 3, 3) / 10)
    x = -0.8
    h = [v if v > 0 else 0.01 * v for v in (1.0 * x, -0.5 * x, 2.0 * x)]
    mix = [[(3 * g + j) / 10 for j in range(3)] for g in range(3)]
    logits = [sum(mix[g][j] * h[j] for j in range(3)) + 0.1 * h[g] for g in range(3)]
    z = sum(math.exp(v) for v in logits)
    p = m.probabilities(torch.tensor([[x]]))[0, 0]
    assert torch.allclose(p.double(), torch.tensor([math.exp(v) / z for v in logits], dtype=torch.float64), atol=TOL)


@pytest.mark.parametrize("projection", ["linear", "leaky_skip"])
def test_weighted_average_trains_meta_embeddings_and_projection(projection):
    m = _autodis("weighted", projection=projection)
    m(torch.tensor([[0.3], [-1.0], [2.0]])).square().sum().backward()
    trained = [m.meta, m.w] + ([m.mix] if projection == "leaky_skip" else [])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


@pytest.mark.parametrize("aggregation", ["max", "topk"])
def test_hard_aggregations_train_only_the_picked_meta_embeddings(aggregation):
    # the paper's max-pooling / top-K pick by argmax: the projection gets no gradient
    m = _autodis(aggregation, top_k=2)
    m(torch.tensor([[1.5]])).sum().backward()
    picked = (m.meta.grad[0].abs().sum(dim=1) > 0).sum().item()
    assert picked == (1 if aggregation == "max" else 2)
    assert m.w.grad is None and not m.w.requires_grad  # frozen: DDP refuses parameters without gradients


def _spec() -> FeatureSpec:
    enc = Encoding("autodis", mean=1.0, std=2.0)
    return FeatureSpec("t", "label", (
        Field("a", "numerical", ("", "0", "1"), encoding=enc),
        Field("c", "categorical", ("x", "y")),
        Field("b", "numerical", ("0", "1"), encoding=enc),
    ))


def test_missing_values_take_the_learned_missing_embedding():
    spec = _spec()
    for kind in ("autodis", "scalar"):
        m = NumericalEmbeddings(spec, {"a": kind, "b": kind}, 4, AutoDisSettings(buckets=4), init_scale=0.1)
        dense = torch.tensor([[float("nan"), 0.5], [0.2, float("nan")], [0.3, 0.4]])
        a, b = m(dense)
        assert torch.equal(a[0], m.missing[0]) and torch.equal(b[1], m.missing[1])
        assert not torch.equal(a[1], m.missing[0]) and torch.isfinite(torch.stack([a, b])).all()
        if kind == "scalar":
            assert torch.allclose(b[2], 0.4 * m.scalar[1], atol=TOL)


def test_model_embeds_autodis_fields_without_tables_or_first_order():
    spec = _spec()
    cfg = ModelConfig(name="deepfm", embedding_dim=4, mlp=[8])
    d = uniform("autodis", spec.names, {n: 4 for n in spec.names}, 10, numerical={"a": "autodis", "b": "autodis"},
                autodis=AutoDisSettings(buckets=5))
    model = build_model(spec, cfg, cluster=d.clusters[0], numerical=d.embedded_numerical, autodis=d.autodis)
    assert list(model.embeddings.layout.fields) == ["c"] and model.n_fields == 3 and model.linear.fields == ("c",)
    assert model.first_order_params == spec.field("c").num_embeddings


def test_decisions_round_trip_and_refuse_autodis_without_settings():
    d = uniform("autodis", ["a", "b"], {"a": 4, "b": 4}, 10, numerical={"a": "autodis", "b": "scalar"},
                autodis=AutoDisSettings(aggregation="topk", top_k=2, projection="leaky_skip"))
    assert Decisions.from_json(d.to_json()) == d and d.embedded_numerical == {"a": "autodis", "b": "scalar"}
    old = uniform("base", ["a"], {"a": 4}, 10).to_json() | {"version": 1}
    old.pop("autodis")
    assert Decisions.from_json(old).numerical == {}
    with pytest.raises(ValueError, match="need the autodis settings"):
        Decisions("x", (ClusterDecision(0, {"a": FieldDecision(4)}),), numerical={"a": "autodis"})
    with pytest.raises(ValueError, match="top_k"):
        Decisions("x", (ClusterDecision(0, {"a": FieldDecision(4)}),), numerical={"a": "autodis"},
                  autodis=AutoDisSettings(buckets=3, top_k=5))
