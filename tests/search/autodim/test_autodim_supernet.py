"""AutoDim search stage: candidate mixing, gradients to α, derive, the retrained model, random dims."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.models.layout import layout_for
from trainer.models.tables import FieldEmbeddings
from trainer.search.autodim.method import AutoDim, AutoDimConfig, random_dims
from trainer.search.autodim.supernet import DimSearchEmbeddings
from trainer.search.gumbel import GumbelSchedule
from trainer.search.interface import SearchContext
from trainer.training import TrainConfig

ROOT = Path(__file__).resolve().parents[3]
CANDIDATES = [2, 4, 8]
FIELDS = ["a", "n", "g", "c"]


def make(toy_spec, **search) -> AutoDim:
    torch.manual_seed(0)
    cfg = ModelConfig(name="deepfm", embedding_dim=8, mlp=[8])
    ctx = SearchContext(toy_spec, cfg, TrainConfig(), None, {}, 100, None, None, lambda _: None)
    m = AutoDim(AutoDimConfig(candidates=CANDIDATES, **search), ctx)
    m.build()
    return m


def weights(m: AutoDim, phase: str, batch: int = 64) -> torch.Tensor:
    m.set_phase(phase)
    m.supernet.train()
    return m.embeddings.mixing_weights(batch)


def test_search_weights_are_a_distribution_per_row_and_field(toy_spec):
    m = make(toy_spec)
    w = weights(m, "search")
    assert w.shape == (len(FIELDS), 64, len(CANDIDATES))
    # float32 sums of three softmax terms: a few ulps from 1
    assert torch.allclose(w.sum(dim=-1), torch.ones(len(FIELDS), 64), atol=1e-6)
    assert (w > 0).all() and (w < 1).all()  # soft at τ = 1


def test_batch_noise_is_shared_by_the_rows_and_row_noise_is_not(toy_spec):
    shared = weights(make(toy_spec), "search")
    assert torch.equal(shared, shared[:, :1].expand_as(shared))
    own = weights(make(toy_spec, noise="row"), "search")
    assert not torch.allclose(own[:, 0], own[:, 1])


def test_weights_become_one_hot_when_annealed(toy_spec):
    m = make(toy_spec, noise="row")
    clock = m.embeddings.clock
    clock.schedule = GumbelSchedule(1.0, 1e-3, 0.01)
    clock.forwards, clock.arch_steps = 1000, 500  # 500 weight steps: τ = 0.5
    assert clock.weight_steps == 500 and clock.tau == pytest.approx(0.5)
    clock.forwards = 10**6  # far past the schedule's end: τ = 0.01
    assert clock.tau == pytest.approx(0.01)
    w = weights(m, "search")
    # at τ = 0.01 the runner-up weighs exp(-Δ/τ) of the winner; Δ (a Gumbel gap) below 0.05
    # happens for a few percent of rows, so the bound is on the share of rows
    assert (w.max(dim=-1).values > 0.99).float().mean() > 0.9


def test_hard_mode_forward_is_one_hot(toy_spec):
    w = weights(make(toy_spec, hard=True), "search")
    assert set(w.unique().tolist()) == {0.0, 1.0} and (w.sum(dim=-1) == 1).all()


def test_eval_phase_is_argmax_alpha(toy_spec, toy_batch):
    m = make(toy_spec)
    with torch.no_grad():
        m.embeddings.alpha.copy_(torch.tensor([[0.0, 1, 0], [2, 0, 0], [0, 0, 3], [0, 1, 0]]))
    w = weights(m, "eval", batch=5)
    assert (w.argmax(dim=-1) == torch.tensor([1, 0, 2, 1])[:, None]).all() and (w.sum(dim=-1) == 1).all()
    m.supernet.eval()
    embs = m.embeddings(toy_batch.sparse_features)
    assert [e.shape[1] for e in embs] == [8] * len(FIELDS)  # the head sees every field at the common dim


def test_gradients_reach_alpha_and_every_candidate(toy_spec, toy_batch):
    m = make(toy_spec)
    m.set_phase("search")
    m.supernet.train()
    logits = m.supernet(toy_batch.dense_features, toy_batch.sparse_features)
    nn.functional.binary_cross_entropy_with_logits(logits, toy_batch.labels).backward()
    emb = m.embeddings
    assert (emb.alpha.grad.abs().sum(dim=1) > 0).all()
    assert all(lin.weight.grad.abs().sum() > 0 for maps in emb.maps.values() for lin in maps)


def test_supernet_stores_every_candidate_table(toy_spec):
    emb = make(toy_spec).embeddings
    assert isinstance(emb, DimSearchEmbeddings) and len(emb.ebc.embedding_bag_configs()) == len(FIELDS) * len(CANDIDATES)
    want = sum(layout_for(toy_spec, {n: d for n in FIELDS}).embedding_params for d in CANDIDATES)
    assert emb.layout.embedding_params == want and emb.layout.dims == (8,) * len(FIELDS)


def test_derive_picks_argmax_and_retrain_has_exactly_those_dims(toy_spec, toy_batch):
    m = make(toy_spec)
    with torch.no_grad():
        m.embeddings.alpha.copy_(torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]]))
    m.set_phase("eval")
    decisions = m.derive(m_ctx(m, toy_spec))
    want = {"a": 8, "n": 2, "g": 4, "c": 2}
    assert decisions.clusters[0].dims == want and len(decisions.clusters) == 1
    model = build_model(toy_spec, m.model_cfg, cluster=decisions.clusters[0])
    assert isinstance(model.embeddings, FieldEmbeddings)
    assert dict(zip(model.embeddings.layout.fields, model.embeddings.layout.dims)) == want
    assert not any(isinstance(x, (nn.BatchNorm1d, nn.Linear)) for x in model.embeddings.modules())
    assert not any(k.startswith(("embeddings.maps", "embeddings.bns")) for k in model.state_dict())
    assert [e.shape[1] for e in model.embeddings(toy_batch.sparse_features)] == [want[f] for f in FIELDS]


def m_ctx(m: AutoDim, spec) -> SearchContext:
    return SearchContext(spec, m.model_cfg, TrainConfig(), None, {}, 100, None, None, lambda _: None)


def test_random_dims_match_the_bytes_and_differ_from_the_choice(toy_spec):
    target = {"a": 8, "n": 2, "g": 4, "c": 2}
    per_dim = {d: layout_for(toy_spec, {n: d for n in FIELDS}) for d in CANDIDATES}
    goal = layout_for(toy_spec, target).embedding_bytes
    # tolerance 0 and no exact match: the closest of every other assignment (3^4 - 1 of them)
    got = random_dims(toy_spec, CANDIDATES, target, 500, seed=3, tolerance=0.0)
    assert got != target and set(got.values()) <= set(CANDIDATES)
    best = min(abs(sum(per_dim[d].table(n).embedding_bytes for n, d in zip(FIELDS, ds)) - goal)
               for ds in np.array(np.meshgrid(*[CANDIDATES] * 4)).T.reshape(-1, 4) if dict(zip(FIELDS, ds)) != target)
    assert abs(layout_for(toy_spec, got).embedding_bytes - goal) == best
    loose = random_dims(toy_spec, CANDIDATES, target, 500, seed=3, tolerance=0.3)
    assert loose != target and abs(layout_for(toy_spec, loose).embedding_bytes - goal) <= 0.3 * goal
    assert loose == random_dims(toy_spec, CANDIDATES, target, 500, seed=3, tolerance=0.3)  # seeded


def test_config_mistake_exits_2_with_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "trainer", "search", "--config", "configs/tiny/autodim_synthetic.toml",
                          "--out", str(tmp_path / "out"), "search.candidates=[8]"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if "search.candidates" in x]
    assert len(lines) == 1 and "at least two distinct dims" in lines[0]
