"""Tiny stand-in models and request rows for the serving tests.

The stand-ins follow the trainer's model contract — (dense [B, n_numerical], KJT) →
logits [B] over a plain mixed-dim EmbeddingBagCollection, one table per field — without
importing `trainer`, so serving is tested against the contract, not one implementation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

from serving.encode import Encoder
from serving.features import FeatureSpec, Field

DIMS = [
    {"user": 8, "item": 4, "age": 4, "genres": 12, "city": 0},  # cluster 0 drops city
    {"user": 4, "item": 16, "age": 0, "genres": 4, "city": 8},  # cluster 1 drops age
]


def make_spec() -> FeatureSpec:
    return FeatureSpec(
        "toy-serving",
        "label",
        (
            Field("user", "categorical", tuple(f"u{i}" for i in range(30))),
            Field("item", "categorical", (), num_ids=50),  # pre-coded ids
            Field("age", "numerical", ("", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "12", "13", "15")),
            Field("genres", "bag", ("drama", "comedy", "action", "horror", "noir")),
            Field("city", "categorical", ("paris", "oslo", "lima")),
        ),
    )


def tables(spec: FeatureSpec, dims: dict[str, int], prefix: str) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"{prefix}{f.name}",
                feature_names=[f.name],
                num_embeddings=f.num_embeddings,
                embedding_dim=dims[f.name],
                pooling=PoolingType.MEAN if f.kind == "bag" else PoolingType.SUM,
            )
            for f in spec.fields
            if dims[f.name] > 0
        ]
    )


class TinyCTR(nn.Module):
    """Mixed-dim EBC + dense input → MLP → logit."""

    def __init__(self, spec: FeatureSpec, dims: dict[str, int]):
        super().__init__()
        self.kept = [f.name for f in spec.fields if dims[f.name] > 0]
        self.ebc = tables(spec, dims, "t_")
        width = sum(dims.values()) + len(spec.numerical)
        self.mlp = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense, sparse):
        pooled = self.ebc(sparse).to_dict()
        return self.mlp(torch.cat([pooled[f] for f in self.kept] + [dense], dim=1)).squeeze(1)


class TinyRouter(nn.Module):
    """Cluster = argmax of a linear function of the pooled base embeddings."""

    def __init__(self, spec: FeatureSpec, k: int):
        super().__init__()
        self.names = spec.names
        self.ebc = tables(spec, {n: 4 for n in spec.names}, "base_")
        self.score = nn.Linear(4 * len(spec.names), k)

    def forward(self, dense, sparse):
        pooled = self.ebc(sparse).to_dict()
        return self.score(torch.cat([pooled[n] for n in self.names], dim=1)).argmax(dim=1)


def random_rows(spec: FeatureSpec, n: int, seed: int) -> list[dict]:
    """Raw request rows mixing every accepted form: tokens (some unseen), ids, numbers."""
    rng = np.random.default_rng(seed)
    genres = spec.field("genres").vocab
    rows = []
    for _ in range(n):
        bag = [str(g) for g in rng.choice(list(genres) + ["unseen"], size=int(rng.integers(0, 4)))]
        age = rng.choice([float(rng.exponential(20)), "", str(int(rng.integers(0, 90)))])
        rows.append(
            {
                "user": f"u{rng.integers(0, 40)}" if rng.random() < 0.7 else int(rng.integers(0, 31)),
                "item": int(rng.integers(0, 50)),
                "age": age if isinstance(age, str) else float(age),
                "genres": bag if rng.random() < 0.8 else [int(i) for i in rng.integers(0, 6, size=len(bag))],
                "city": str(rng.choice(["paris", "oslo", "lima", "rome"])),
            }
        )
    return rows


def in_memory_scores(spec, models, router, rows) -> tuple[np.ndarray, np.ndarray]:
    """What the exporter's in-memory models say: (probabilities, clusters)."""
    batch = Encoder(spec).encode_rows(rows)
    inputs = batch.to_inputs(spec.names)
    with torch.no_grad():
        clusters = router(*inputs).numpy()
        every = torch.stack([m(*inputs) for m in models])  # [K, B]
        logits = every[torch.from_numpy(clusters), torch.arange(len(rows))]
    return torch.sigmoid(logits).numpy(), clusters
