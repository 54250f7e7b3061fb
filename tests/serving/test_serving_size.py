"""served_bytes counts every tensor of the exported models, as the in-memory models hold them."""

from __future__ import annotations

import copy
import json

import torch
from serving_fixtures import random_rows

from serving.bundle import served_bytes, write_bundle
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


def test_quantized_bundle_counts_the_stored_tables(tmp_path, spec, models):
    from torchrec.inference.modules import quantize_embeddings

    model = models[0][0]
    example = Encoder(spec).encode_rows(random_rows(spec, 16, seed=3)).to_inputs(spec.names)
    out = write_bundle(tmp_path / "int8", spec=spec, cluster_models=[model], router=None, example=example,
                       version="int8-1", quantize="int8")
    quantized = state_bytes(quantize_embeddings(copy.deepcopy(model), dtype=torch.qint8, inplace=True), "cluster_0.pt2")
    sizes = served_bytes(out)
    assert sizes["router"] == 0 and sizes["clusters"] == [sizes["total"]] == [sum(quantized.values())]
    assert {name: entry[2] for name, entry in sizes["tensors"].items()} == quantized
    tables = [entry for name, entry in sizes["tensors"].items() if ":ebc." in name]
    assert tables and {dtype for dtype, _, _ in tables} == {"uint8"}  # int8 rows with their scale/bias columns
    assert sizes["embedding"] == in_tables(quantized) < in_tables(state_bytes(model, "cluster_0.pt2"))
