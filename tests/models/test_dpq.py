"""DPQ-compressed tables: lookups, pooling, gradients, train/inference agreement, bytes, export."""

import numpy as np
import pytest
import torch

from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.models.dpq import CompressedEmbeddings, DPQCodebook, served_model, to_served
from trainer.models.layout import OTHERS, code_dtype, dpq, n_full_ids, plan_layout

# descending train counts per id (id 0 = OOV); threshold 10 → a: ids 4..7 coded, g: ids 2..3, n: 3..4
COUNTS = {
    "a": np.array([0, 50, 40, 30, 5, 3, 2, 1]),
    "n": np.array([0, 90, 20, 9, 1]),
    "g": np.array([0, 30, 5, 2]),
    "c": np.array([0, 70, 60]),
}
DIM = 8


def layout(toy_spec, **choices):
    return plan_layout(toy_spec, COUNTS, {n: DIM for n in toy_spec.names}, threshold=10, choices=choices)


def trained_like(toy_spec, seed=0, **choices) -> CompressedEmbeddings:
    """A compressed module with random (not tiny) rows and centroids drawn from them."""
    torch.manual_seed(seed)
    emb = CompressedEmbeddings(layout(toy_spec, **choices), init_scale=1.0)
    emb.init_codebooks(seed)
    return emb


def single(field: str, ids: list[int], keys: list[str]):
    """A KJT with one id per row for `field` and id 1 for every other key."""
    from torchrec import KeyedJaggedTensor

    n = len(ids)
    values = torch.cat([torch.tensor(ids) if k == field else torch.ones(n, dtype=torch.long) for k in keys])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=torch.ones(n * len(keys), dtype=torch.int32))


def test_split_is_a_suffix_and_needs_count_order(toy_spec):
    lay = layout(toy_spec)
    assert [(t.name, t.n_full, t.n_low) for t in lay.tables] == [("a", 4, 4), ("n", 3, 2), ("g", 2, 2), ("c", 3, 0)]
    with pytest.raises(ValueError, match="descending train-count"):
        n_full_ids(np.array([0, 1, 5, 3]), 2, "x")
    with pytest.raises(ValueError, match="no low-frequency"):
        layout(toy_spec, c=dpq(2, 2))


def test_inference_lookup_of_a_coded_id_is_its_centroids(toy_spec):
    emb = trained_like(toy_spec, a=dpq(4, 2))
    served = to_served(emb)
    codes = served.codes_a
    assert codes.dtype == torch.uint8 and codes.shape == (4, 2)
    out = served(single("a", [4, 5, 6, 7], toy_spec.names))[0]
    book = emb.codebooks["a"].centroids  # [D, K, X/D]
    for row, v in enumerate(range(4, 8)):
        want = torch.cat([book[i, int(codes[v - 4, i])] for i in range(2)])
        assert torch.equal(out[row], want)
    # the code is the argmax of the raw row's dot products with each sub-space's centroids
    raw = emb.raw["a"].weight.detach().reshape(4, 2, 4)
    assert torch.equal(codes.long(), torch.einsum("vdx,dkx->vdk", raw, book.detach()).argmax(-1))


@pytest.mark.parametrize("form", ["train", "served"])
def test_bag_pooling_is_the_mean_of_per_id_vectors(toy_spec, toy_batch, form):
    emb = trained_like(toy_spec, a=dpq(4, 4), g=dpq(2, 2), n=OTHERS).eval()
    module = emb if form == "train" else to_served(emb)
    with torch.no_grad():
        pooled = module(toy_batch.sparse_features)[2]  # field g (mean-pooled bag)
        per_id = module(single("g", [0, 1, 2, 3], toy_spec.names))[2]  # one vector per g id
    for row, ids in enumerate(toy_batch.sparse_features.to_dict()["g"].to_dense()):
        want = per_id[ids].mean(0) if len(ids) else torch.zeros(DIM)
        assert torch.allclose(pooled[row], want, atol=1e-6)


@pytest.mark.parametrize("form", ["train", "served"])
def test_bag_sum_over_coded_ids_is_the_sum_of_per_id_vectors(toy_spec, form):
    """Bags built to hold several coded ids (g: 2, 3 coded; 1 full): the bag's SUM pool
    (= mean × length) equals the sum of the per-id vectors, in both forms."""
    from torchrec import KeyedJaggedTensor

    emb = trained_like(toy_spec, a=dpq(4, 2), g=dpq(2, 4)).eval()
    module = emb if form == "train" else to_served(emb)
    bags = [[2, 3], [3, 3, 2], [1, 2, 3], [2], [1, 1]]
    b = len(bags)
    keys = toy_spec.names  # a, n, g, c
    values = torch.cat([torch.ones(2 * b, dtype=torch.long), torch.tensor(sum(bags, [])), torch.ones(b, dtype=torch.long)])
    lengths = torch.tensor([1] * 2 * b + [len(x) for x in bags] + [1] * b)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths)
    with torch.no_grad():
        pooled = module(kjt)[2]
        per_id = module(single("g", [0, 1, 2, 3], keys))[2]
    assert not torch.equal(per_id[2], per_id[3])  # two distinct coded vectors
    for row, ids in enumerate(bags):
        assert torch.allclose(pooled[row] * len(ids), per_id[ids].sum(0), atol=1e-6)


def test_others_ids_share_one_row(toy_spec):
    emb = trained_like(toy_spec, a=OTHERS)
    out = emb(single("a", [3, 4, 5, 6, 7], toy_spec.names))[0]
    assert not torch.equal(out[0], out[1])
    assert all(torch.equal(out[1], out[i]) for i in range(2, 5))


def test_training_gradients_reach_raw_rows_centroids_and_tables(toy_spec, toy_batch):
    emb = trained_like(toy_spec, a=dpq(4, 2), g=dpq(2, 2))
    for book in emb.codebooks.values():
        book.tau = 1.0  # soft enough that every raw row is off a tie (τ_KD = 1e-4: next test)
    sum(e.pow(2).sum() for e in emb(toy_batch.sparse_features)).backward()
    ids = toy_batch.sparse_features.to_dict()["a"].values()
    used = sorted(set((ids[ids >= 4] - 4).tolist()))
    assert used, "the toy batch has coded ids of field a"
    raw_grad = emb.raw["a"].weight.grad
    assert all(raw_grad[i].abs().sum() > 0 for i in used)
    assert emb.codebooks["a"].centroids.grad.abs().sum() > 0 and emb.codebooks["g"].centroids.grad.abs().sum() > 0
    table_grad = emb.ebc.embedding_bags["t_a"].weight.grad
    high = sorted(set(ids[ids < 4].tolist()))
    assert all(table_grad[i].abs().sum() > 0 for i in high)


def test_sparse_raw_rows_move_only_the_batch_rows(toy_spec, toy_batch):
    from trainer.distributed import dense_optimizer, sparse_rows

    torch.manual_seed(0)
    emb = CompressedEmbeddings(layout(toy_spec, a=dpq(4, 2)), init_scale=1.0, sparse=True)
    emb.init_codebooks(0)
    emb.codebooks["a"].tau = 1.0  # soft: every raw row of the batch gets a gradient
    opt = dense_optimizer(dict(emb.named_parameters()), 0.1, 0.0, sparse_rows(emb))
    before = emb.raw["a"].weight.detach().clone()
    sum(e.pow(2).sum() for e in emb(toy_batch.sparse_features)).backward()
    assert emb.raw["a"].weight.grad.is_sparse
    opt.step()
    ids = toy_batch.sparse_features.to_dict()["a"].values()
    used = set((ids[ids >= 4] - 4).tolist())
    moved = {i for i in range(4) if not torch.equal(emb.raw["a"].weight[i], before[i])}
    assert used and moved == used  # lazy Adam: the batch's rows, and no other


def test_straight_through_at_tau_kd_1e4():
    """Forward = the hard choice exactly; near a tie the softmax passes gradient to the raw row."""
    book = DPQCodebook(k=2, d=1, dim=2)  # τ_KD = 1e-4
    with torch.no_grad():
        book.centroids.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    e = torch.tensor([[0.5, 0.5 - 1e-4], [2.0, -1.0]], requires_grad=True)  # a near tie; a clear winner
    out = book(e)
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    (out * torch.tensor([0.0, 1.0])).sum().backward()
    assert e.grad[0].abs().sum() > 0  # soft path at the tie
    assert torch.equal(e.grad[1], torch.zeros(2))  # saturated softmax: no gradient
    assert book.centroids.grad[0, 0, 1] != 0  # the chosen centroid gets the output gradient


def test_hard_forward_equals_inference_path(toy_spec, toy_batch):
    emb = trained_like(toy_spec, a=dpq(4, 2), n=OTHERS, g=dpq(2, 4))
    train_out = emb(toy_batch.sparse_features)  # training form, autograd on
    served_out = to_served(emb)(toy_batch.sparse_features)
    for got, want in zip(served_out, train_out):
        assert torch.allclose(got, want.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [4, 300])
def test_reported_bytes_are_the_bytes_stored(toy_spec, k):
    lay = layout(toy_spec, a=dpq(k, 2), n=OTHERS, g=dpq(2, 8))
    served = to_served(CompressedEmbeddings(lay))
    assert served.codes_a.dtype == code_dtype(k) == (torch.uint8 if k <= 256 else torch.int16)
    stored = sum(t.numel() * t.element_size() for t in served.state_dict().values())
    assert lay.embedding_bytes == served.stored_bytes() == stored
    # no raw low-frequency rows at inference: a coded field costs codes + centroids + frequent rows
    a = lay.table("a")
    assert a.embedding_bytes == 4 * DIM * 4 + 4 * 2 * served.codes_a.element_size() + 2 * k * 4 * 4
    assert not any("raw" in key for key in served.state_dict())


@pytest.mark.parametrize("first_order_low", ["own", "shared"])
def test_bundle_round_trip_serves_the_offline_scores(toy_spec, toy_batch, tmp_path, first_order_low):
    from serving.batch import FeatureBatch
    from serving.bundle import load_bundle, served_bytes, write_bundle
    from serving.predictor import Predictor

    cfg = ModelConfig(name="deepfm", embedding_dim=DIM, mlp=[8], first_order_low=first_order_low)
    fe = build_model(toy_spec, cfg)
    torch.nn.init.normal_(fe.embeddings.ebc.embedding_bags["t_g"].weight)
    torch.nn.init.normal_(fe.embeddings.ebc.embedding_bags["t_a"].weight)
    torch.nn.init.normal_(fe.linear.ebc.embedding_bags["w_a"].weight)
    model = build_model(toy_spec, cfg, layout=layout(toy_spec, a=dpq(4, 2), n=OTHERS, g=dpq(2, 2)))
    from trainer.search.autodpq.method import load_pretrained

    load_pretrained(model, fe, seed=0)
    w_a, fe_w_a = model.linear.ebc.embedding_bags["w_a"].weight, fe.linear.ebc.embedding_bags["w_a"].weight
    if first_order_low == "shared":  # field a: ids 4..7 coded; c has no low-frequency ids
        assert w_a.shape[0] == 5 and model.linear.ebc.embedding_bags["w_c"].weight.shape[0] == 3
        assert torch.equal(w_a[:4], fe_w_a[:4]) and torch.allclose(w_a[4], fe_w_a[4:].mean(0))
        coded = model.linear(single("a", [4, 5, 6, 7, 3], toy_spec.names))
        assert torch.equal(coded[:4], coded[:1].expand(4)) and coded[4] != coded[0]
    else:
        assert torch.equal(w_a, fe_w_a)
    model.eval()
    dense, sparse = toy_batch.dense_features, toy_batch.sparse_features
    served = served_model(model)
    path = write_bundle(tmp_path / "b", spec=toy_spec, cluster_models=[served], router=None,
                        example=(dense, sparse), version="dpq-test")
    bundle = load_bundle(path)
    derived = [t for t in bundle.manifest.clusters[0].tables if "derived" in t]
    assert {t["derived"] for t in derived} >= {"a:dpq", "a:dpq0", "a:dpq1", "g:dpq0", "n:others"}
    got = Predictor(bundle).predict(FeatureBatch.from_inputs(toy_spec, dense, sparse)).probabilities
    with torch.no_grad():
        want = torch.sigmoid(model(dense, sparse)).numpy()
    assert np.abs(got - want).max() < 1e-6
    # what the bundle stores is what the trainer's byte accounting says: the codes are embedding storage
    sizes = served_bytes(path)
    assert sizes["total"] == sum(t.numel() * t.element_size() for t in served.state_dict().values())
    first_order = sum(t.numel() * t.element_size() for t in served.linear.state_dict().values())
    assert sizes["embedding"] == served.embeddings.stored_bytes() + first_order
    assert sizes["tensors"]["cluster_0.pt2:embeddings.codes_a"][0] == "uint8"
