"""Row-wise int8 / int4 storage of low-frequency rows: values, gradients, bytes, served form."""

import numpy as np
import pytest
import torch

from trainer.models.dpq import CompressedEmbeddings, to_served
from trainer.models.layout import Compression, plan_layout
from trainer.models.rowwise import fake_quantize, pack, unpack

COUNTS = {  # descending train counts (id 0 = OOV); threshold 10 → a: ids 4..7 low, g: 2..3, n: 3..4
    "a": np.array([0, 50, 40, 30, 5, 3, 2, 1]),
    "n": np.array([0, 90, 20, 9, 1]),
    "g": np.array([0, 30, 5, 2]),
    "c": np.array([0, 70, 60]),
}


@pytest.mark.parametrize("kind,levels", [("int8", 255), ("int4", 15)])
def test_stored_values_by_hand(kind, levels):
    x = torch.tensor([[-1.0, 0.0, 0.5, 1.0], [2.0, 2.0, 2.0, 2.0]])
    q, qparams = pack(x, kind)
    assert q.dtype == torch.uint8 and q.shape == (2, 4 if kind == "int8" else 2)
    assert qparams.dtype == torch.float16
    # row 0: bias -1, scale 2 / levels (fp16); level of 0.5 = round(1.5 / scale)
    scale = float(torch.tensor(2.0 / levels, dtype=torch.float16))
    want = torch.tensor([-1.0 + round(v / scale) * scale for v in (0.0, 1.0, 1.5, 2.0)])
    got = unpack(q, qparams, kind)
    assert torch.allclose(got[0], want, atol=1e-6)
    assert torch.equal(got[1], x[1])  # a constant row: scale 0, every value the bias
    assert torch.equal(fake_quantize(x, kind), got)  # training reads exactly what is served


def test_gradient_passes_straight_through():
    x = torch.randn(3, 8, requires_grad=True)
    (fake_quantize(x, "int4") * torch.arange(8.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(8.0).expand(3, 8))


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_served_rows_equal_training_rows_and_bytes_are_stored(toy_spec, toy_batch, kind):
    dims = {n: 8 for n in toy_spec.names}
    lay = plan_layout(toy_spec, COUNTS, dims, threshold=10, choices={"a": Compression(kind), "g": Compression(kind)})
    torch.manual_seed(0)
    emb = CompressedEmbeddings(lay, init_scale=1.0)
    served = to_served(emb)
    for got, want in zip(served(toy_batch.sparse_features), emb(toy_batch.sparse_features)):
        # the same fp32 values summed in another order (index_add vs the pooled sum)
        assert torch.allclose(got, want.detach(), atol=1e-6, rtol=0)
    stored = sum(t.numel() * t.element_size() for t in served.state_dict().values())
    assert lay.embedding_bytes == served.stored_bytes() == stored
    a = lay.table("a")  # 4 frequent rows (8 wide fp32) + 4 low rows of 8 values at b bits + fp16 scale and bias
    assert a.embedding_bytes == 4 * 8 * 4 + 4 * (8 * {"int8": 8, "int4": 4}[kind] // 8 + 4)
    assert not any("raw" in k for k in served.state_dict())


def test_odd_dims_cannot_take_int4(toy_spec):
    with pytest.raises(ValueError, match="int4 rows need dim"):
        plan_layout(toy_spec, COUNTS, {n: 3 for n in toy_spec.names}, threshold=10, choices={"a": Compression("int4")})


def test_bundle_serves_the_offline_scores(toy_spec, toy_batch, tmp_path):
    from serving.batch import FeatureBatch
    from serving.bundle import load_bundle, served_bytes, write_bundle
    from serving.predictor import Predictor
    from trainer.models.build import build_model
    from trainer.models.ctr import ModelConfig
    from trainer.models.dpq import served_model

    cfg = ModelConfig(name="deepfm", embedding_dim=8, mlp=[8], first_order_low="shared")
    lay = plan_layout(toy_spec, COUNTS, {n: 8 for n in toy_spec.names}, threshold=10,
                      choices={"a": Compression("int8"), "g": Compression("int4")})
    torch.manual_seed(0)
    model = build_model(toy_spec, cfg, layout=lay)
    torch.nn.init.normal_(model.embeddings.raw["a"].weight)
    torch.nn.init.normal_(model.embeddings.raw["g"].weight)
    model.eval()
    dense, sparse = toy_batch.dense_features, toy_batch.sparse_features
    served = served_model(model)
    path = write_bundle(tmp_path / "b", spec=toy_spec, cluster_models=[served], router=None,
                        example=(dense, sparse), version="rowwise-test")
    got = Predictor(load_bundle(path)).predict(FeatureBatch.from_inputs(toy_spec, dense, sparse)).probabilities
    with torch.no_grad():
        want = torch.sigmoid(model(dense, sparse)).numpy()
    assert np.abs(got - want).max() < 1e-6  # fp32 sums in another order
    sizes = served_bytes(path)
    assert sizes["total"] == sum(t.numel() * t.element_size() for t in served.state_dict().values())
    assert sizes["tensors"]["cluster_0.pt2:embeddings.rows_g"][0] == "uint8"
