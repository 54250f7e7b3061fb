"""The export guard: a cluster model worse than Base on its own validation rows is served by Base."""

from types import SimpleNamespace

import numpy as np

from trainer.decisions import ClusterDecision, Decisions, FieldDecision, RouterDecision
from trainer.jobs.guard import collapse, guard
from trainer.jobs.retrain import Trained
from trainer.metrics import summary


def _data(n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(3 * n) < 0.3).astype(np.float32)
    index = {"train": np.arange(n), "val": np.arange(n, 2 * n), "test": np.arange(2 * n, 3 * n)}
    ds = SimpleNamespace(labels=labels, indices=lambda s: index[s])
    # cluster 1 is small and skewed: 10% of rows
    assign = {s: (rng.random(n) < 0.1).astype(np.int64) for s in index}
    return ds, assign, {s: labels[index[s]] for s in ("val", "test")}


def _trained(name: str, probs: dict, clusters: int) -> Trained:
    fields = {"a": FieldDecision(4)}
    cs = tuple(ClusterDecision(c, fields, 10) for c in range(clusters))
    router = RouterDecision([[0.0]] * clusters, 10, 0.5) if clusters > 1 else None
    return Trained(Decisions(name, cs, router=router), [f"{name}-model-{c}" for c in range(clusters)], [], {}, 0.0, probs)


def test_an_underperforming_small_cluster_is_served_by_base():
    ds, assign, y = _data()
    rng = np.random.default_rng(1)
    good = {s: np.clip(0.3 + 0.4 * (y[s] - 0.3) + 0.1 * rng.standard_normal(len(y[s])), 0.01, 0.99) for s in y}
    base = _trained("base", good, 1)
    # the cluster models: as good as Base on cluster 0, noise on cluster 1 (a collapsed retrain)
    probs = {s: np.where(assign[s] == 1, rng.random(len(y[s])), good[s]) for s in y}
    ihas = _trained("ihas", probs, 2)
    guarded, checks = guard(ihas, base, assign, ds, log=lambda _: None)
    assert [c["served_by"] for c in checks] == ["self", "base"]
    assert [c.served_by for c in guarded.decisions.clusters] == ["self", "base"]
    assert guarded.models == ["ihas-model-0", "base-model-0"]
    for s in ("val", "test"):  # the guarded scores are Base's on cluster 1, the cluster model's elsewhere
        assert np.array_equal(guarded.probs[s][assign[s] == 1], good[s][assign[s] == 1])
        assert np.array_equal(guarded.probs[s][assign[s] == 0], probs[s][assign[s] == 0])
    assert guarded.metrics["test_auc"] > summary(probs["test"], y["test"])["auc"]
    assert ihas.decisions.clusters[1].served_by == "self"  # the input is not modified


def test_clusters_that_beat_base_keep_their_models():
    ds, assign, y = _data(seed=2)
    base = _trained("base", {s: np.full(len(y[s]), 0.3) for s in y}, 1)  # uninformative Base
    ihas = _trained("ihas", {s: np.clip(y[s] * 0.5 + 0.25, 0, 1) for s in y}, 2)
    guarded, checks = guard(ihas, base, assign, ds, log=lambda _: None)
    assert all(c["served_by"] == "self" for c in checks) and guarded.models == ihas.models


def test_when_every_cluster_loses_base_is_served_alone_without_a_router():
    ds, assign, y = _data(seed=3)
    base = _trained("base", {s: np.clip(y[s] * 0.5 + 0.25, 0, 1) for s in y}, 1)  # a perfect-ranking Base
    ihas = _trained("ihas", {s: np.random.default_rng(4).random(len(y[s])) for s in y}, 2)  # noise everywhere
    guarded, checks = guard(ihas, base, assign, ds, log=lambda _: None)
    assert [c["served_by"] for c in checks] == ["base", "base"]
    one = {s: np.zeros_like(a) for s, a in assign.items()}
    served, router, rows = collapse(guarded, "router", assign, one, log=lambda _: None)
    assert served.models == ["base-model-0"] and router is None and rows is one
    assert served.metrics == guarded.metrics  # Base's scores on every row


def test_collapse_keeps_the_router_while_one_cluster_serves_its_own_model():
    ds, assign, y = _data(seed=5)
    rng = np.random.default_rng(6)
    good = {s: np.clip(y[s] * 0.5 + 0.25 + 0.05 * rng.standard_normal(len(y[s])), 0, 1) for s in y}
    base = _trained("base", good, 1)
    ihas = _trained("ihas", {s: np.where(assign[s] == 1, rng.random(len(y[s])), np.clip(y[s] * 0.5 + 0.25, 0, 1)) for s in y}, 2)
    guarded, _ = guard(ihas, base, assign, ds, log=lambda _: None)
    served, router, rows = collapse(guarded, "router", assign, {}, log=lambda _: None)
    assert served is guarded and router == "router" and rows is assign
