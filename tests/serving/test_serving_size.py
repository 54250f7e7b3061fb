"""served_bytes counts every tensor of the exported models, as the in-memory models hold them."""

from __future__ import annotations

import copy
import json

import torch
from serving_fixtures import random_rows

from serving.bundle import served_bytes, write_bundle
from serving.bundle.size import archived_tensor_bytes
from serving.encode import Encoder


def state_bytes(model: torch.nn.Module, prefix: str) -> dict[str, int]:
    return {f"{prefix}:{name}": t.numel() * t.element_size() for name, t in model.state_dict().items()}


def in_tables(sizes: dict[str, int]) -> int:
    """The stand-in models keep their embedding tables in `ebc`; names are "<file>:<tensor>"."""
    return sum(b for name, b in sizes.items() if ":ebc." in name)


def test_router_bundle_counts_router_and_clusters(bundle_dir, models):
    cluster_models, router = models
    clusters = [state_bytes(m, f"cluster_{k}.pt2") for k, m in enumerate(cluster_models)]
    routing = state_bytes(router, "router.pt2")
    sizes = served_bytes(bundle_dir)
    assert sizes["clusters"] == [sum(c.values()) for c in clusters]
    assert sizes["router"] == sum(routing.values()) > 0
    assert sizes["total"] == sizes["router"] + sum(sizes["clusters"])
    every = {name: b for c in clusters + [routing] for name, b in c.items()}
    assert {name: entry[2] for name, entry in sizes["tensors"].items()} == every
    assert sizes["tensors"]["router.pt2:ebc.embedding_bags.base_user.weight"] == ["float32", [31, 4], 31 * 4 * 4]
    assert sizes["embedding"] == in_tables(every)
    assert json.loads(json.dumps(sizes)) == sizes  # ready for a report as it is


def test_quantized_bundle_stores_and_counts_its_rows_once(tmp_path, spec, models):
    """int8 tables: the per-table views of FBGEMM's packed rows are not exported (no graph
    node reads them), the packed rows are, once; served bytes = every tensor the .pt2
    stores = the float model's non-table state + the packed rows + their offsets."""
    from torchrec.inference.modules import quantize_embeddings

    model = models[0][0]
    example = Encoder(spec).encode_rows(random_rows(spec, 16, seed=3)).to_inputs(spec.names)
    out = write_bundle(tmp_path / "int8", spec=spec, cluster_models=[model], router=None, example=example,
                       version="int8-1", quantize="int8")
    q = quantize_embeddings(copy.deepcopy(model), dtype=torch.qint8, inplace=True)
    views = [t for name, t in q.state_dict().items() if ".embedding_bags." in name]
    packed = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in views}  # one packed buffer per kernel
    sizes = served_bytes(out)
    assert sizes["router"] == 0 and sizes["clusters"] == [sizes["total"]] == [archived_tensor_bytes(out)]
    assert not [name for name in sizes["tensors"] if ".embedding_bags." in name]  # no second copy of the rows
    float_state = state_bytes(model, "cluster_0.pt2")
    rest = sum(b for name, b in float_state.items() if ":ebc." not in name)
    small = {name: b for name, (_, _, b) in sizes["tensors"].items() if b not in packed.values() and name not in float_state}
    assert all(b <= 64 for b in small.values()), small  # FBGEMM's offsets and placements beside the rows
    assert sizes["total"] == rest + sum(packed.values()) + sum(small.values())
    assert sizes["embedding"] == sum(packed.values()) + sum(small.values()) < in_tables(float_state)


def test_quantizing_keeps_float_the_tables_it_would_not_shrink():
    """A 4-wide table (how a first-order weight per id is stored) is 16 bytes a row in float32
    and in any FBGEMM quantized form (rows padded to 16 bytes): it stays float32, exact; a
    16-wide table (64 bytes float32, 32 as int8) is quantized. Scores move only by the int8
    rounding."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    from serving.bundle.export import _quantize_tables

    model = torch.nn.Module()
    model.first = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="w", embedding_dim=4, num_embeddings=50, feature_names=["a"])])
    model.rows = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=16, num_embeddings=50, feature_names=["a"])])
    ids = KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=torch.tensor([1, 7, 30]), lengths=torch.tensor([1, 2]))
    with torch.no_grad():
        want = model.first(ids).values(), model.rows(ids).values()
        q = _quantize_tables(copy.deepcopy(model), "int8")
        assert type(q.first) is EmbeddingBagCollection and isinstance(q.rows, QuantEBC)
        assert torch.equal(q.first(ids).values(), want[0])
        # int8 rounds each value to within a step of 1/255 of its row's range; a bag sums up to two rows
        span = (model.rows.embedding_bags["t"].weight.max(1).values - model.rows.embedding_bags["t"].weight.min(1).values).max()
        assert (q.rows(ids).values() - want[1]).abs().max() <= 2 * span / 255 + 1e-6
