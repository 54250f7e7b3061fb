"""Writes a DeepFM-sized multi-cluster bundle for load tests (the trainer's real models).

    .venv/bin/python scripts/make_deepfm_bundle.py --out runs/loadtest/deepfm-2c

MovieLens-1M-shaped feature spec (8 fields: 7 categorical + the genres bag, ML-1M
vocabulary sizes), one trainer DeepFM per cluster (embedding dim 16, MLP 400-400-400,
untrained weights: serving cost does not depend on them) and a nearest-centroid router
over its own dim-16 tables whose centroids come from a few k-means steps on random rows,
so rows split between the clusters. A tool, not part of serving: it imports `trainer`,
which serving must not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from serving.batch import FeatureBatch
from serving.bundle import write_bundle
from serving.features import FeatureSpec, Field

ML1M_SIZES = {
    "user_id": 6040, "item_id": 3706, "age": 7, "gender": 2, "occupation": 21,
    "zip_code": 3439, "release_year": 81, "genres": 18,
}


def movielens_like_spec() -> FeatureSpec:
    fields = tuple(
        Field(name, "bag" if name == "genres" else "categorical", tuple(f"{name}:{i}" for i in range(size)))
        for name, size in ML1M_SIZES.items()
    )
    return FeatureSpec("movielens1m-like", "rating", fields)


def random_batch(spec: FeatureSpec, n: int, rng: np.random.Generator) -> FeatureBatch:
    ids, lengths = [], []
    for f in spec.fields:
        if f.kind == "bag":
            lens = rng.integers(1, 4, n).astype(np.int32)
            ids.append(rng.integers(1, f.num_embeddings, int(lens.sum())))
            lengths.append(lens)
        else:
            ids.append(rng.integers(0, f.num_embeddings, n))
            lengths.append(None)
    return FeatureBatch(np.zeros((n, 0), np.float32), tuple(ids), tuple(lengths))


class CentroidRouter(nn.Module):
    """Row → nearest of K centroids of its concatenated dim-`dim` base embeddings."""

    def __init__(self, spec: FeatureSpec, k: int, dim: int = 16):
        super().__init__()
        self.names = spec.names
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"base_{f.name}", feature_names=[f.name], num_embeddings=f.num_embeddings, embedding_dim=dim,
                               pooling=PoolingType.MEAN if f.kind == "bag" else PoolingType.SUM)
            for f in spec.fields
        ])
        self.register_buffer("centroids", torch.zeros(k, dim * len(spec.names)))

    def embed(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse).to_dict()
        return torch.cat([pooled[n] for n in self.names], dim=1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        e = self.embed(sparse)
        d = (e * e).sum(1, keepdim=True) - 2 * e @ self.centroids.T + (self.centroids * self.centroids).sum(1)[None, :]
        return d.argmin(dim=1)

    @torch.no_grad()
    def fit(self, sparse: KeyedJaggedTensor, steps: int = 10) -> None:
        e = self.embed(sparse)
        k = self.centroids.shape[0]
        c = e[torch.randperm(len(e))[:k]].clone()
        for _ in range(steps):
            assign = torch.cdist(e, c).argmin(1)
            for j in range(k):
                if (assign == j).any():
                    c[j] = e[assign == j].mean(0)
        self.centroids.copy_(c)


def build(out: Path, version: str, clusters: int = 2, seed: int = 0, quantize: str = "none", init_scale: float = 0.01) -> Path:
    from trainer.models.build import build_model
    from trainer.models.ctr import ModelConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = movielens_like_spec()
    cfg = ModelConfig(name="deepfm", embedding_dim=16, mlp=[400, 400, 400], init_scale=init_scale)
    dims = [{n: 16 for n in spec.names} for _ in range(clusters)]
    models = [build_model(spec, cfg, dims=d).eval() for d in dims]
    router = CentroidRouter(spec, clusters)
    router.fit(random_batch(spec, 4096, rng).to_inputs(spec.names)[1])
    router.eval()
    example = random_batch(spec, 64, rng).to_inputs(spec.names)
    return write_bundle(out, spec=spec, cluster_models=models, router=router if clusters > 1 else None, example=example,
                        version=version, metadata={"method": "loadtest-deepfm"}, dims=dims, overwrite=True, quantize=quantize)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--version", default="deepfm-2c-v1")
    ap.add_argument("--clusters", type=int, default=2)
    ap.add_argument("--quantize", default="none", help="none | int8 | fp16 (cluster models' embedding tables)")
    ap.add_argument("--init-scale", type=float, default=0.01, help="embedding init range (the trainer's default 0.01)")
    args = ap.parse_args(argv)
    path = build(Path(args.out), args.version, args.clusters, quantize=args.quantize, init_scale=args.init_scale)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
