"""The compression schemes of the frontier, one small plug-in each.

A scheme has a `Config` dataclass (its `[frontier.schemes.<name>]` table, with
`validate() -> list[str]`), `check(exp) -> list[str]` for rules that span sections, and
`points(cfg, bench) -> [Exported]`: for one seed, train what it needs through `bench`
and export every point as a bundle. Measuring the bundles is the harness's job
(trainer.frontier.bundles), the same for every scheme.

Every scheme trains from scratch with the frontier's model and training settings, every
field at the model's dim unless the scheme is about the dim; only AutoDPQ and its
baselines start from a trained FE model, as that method prescribes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from serving.bundle.manifest import QUANTIZATIONS
from trainer.frontier.bundles import Bench, Exported
from trainer.frontier.embeddings import MappedEmbeddings, QREmbeddings, TwoTierEmbeddings
from trainer.models.build import build_model
from trainer.models.ctr import MODELS

QUANTIZE_LABELS = {"none": "fp32", "fp16": "fp16", "int8": "int8", "int4": "int4"}


def _uses_first_order(bench: Bench) -> bool:
    return MODELS[bench.model.name].uses_linear


def _stored(bench: Bench, key: str, trained, quantize: list[str], scheme: str, settings: dict, label: str) -> list[Exported]:
    """The fp32 point of a trained model, then one per extra table storage of `quantize` (the
    same model, its tables quantized at export: post-training, no retraining)."""
    out = [Exported(scheme, settings, label, bench.seed, bench.export(key, trained), trained.seconds)]
    for q in quantize:
        out.append(Exported(scheme, {**settings, "quantize": q}, f"{label} {q}", bench.seed,
                            bench.export(f"{key}_{q}", trained, q), trained.seconds))
    return out


def quantize_problems(key: str, quantize: list[str]) -> list[str]:
    """Extra table storages must be the bundle's quantization kinds (float32 is the point itself)."""
    bad = sorted(set(quantize) - set(QUANTIZATIONS))
    return [f"{key}: {bad} not in {sorted(QUANTIZATIONS)}"] if bad else []


def _one_dim(exp) -> list[str]:
    if exp.model.dims:
        return [f"model.dims: the frontier compresses every field at model.embedding_dim; got per-field dims {exp.model.dims}"]
    return []


@dataclass
class FEConfig:
    """Full embeddings (every id its own fp32 row), exported with each table storage.

    Args:
        quantize: table storages of the bundle ("none" = fp32, "fp16", "int8", "int4": torchrec's
            quantized tables, the bundle's own quantize path); one trained model, one point each.
    """

    quantize: list[str] = field(default_factory=lambda: ["none", "fp16", "int8"])

    def validate(self) -> list[str]:
        bad = sorted(set(self.quantize) - set(QUANTIZE_LABELS))
        return [f"frontier.schemes.fe.quantize: {bad} not in {sorted(QUANTIZE_LABELS)}"] if bad or not self.quantize else []


class FE:
    Config = FEConfig

    @staticmethod
    def check(exp) -> list[str]:
        return []

    @staticmethod
    def points(cfg: FEConfig, bench: Bench) -> list[Exported]:
        trained = bench.train("fe", lambda device=None: build_model(bench.spec, bench.model, device=device))
        out = []
        for q in cfg.quantize:
            label = QUANTIZE_LABELS[q]
            path = bench.export(f"fe_{label}", trained, q)
            out.append(Exported(f"fe_{label}", {"quantize": q, "dim": bench.model.embedding_dim}, label, bench.seed, path,
                                trained.seconds))
        return out


@dataclass
class DimConfig:
    """Full embeddings at a smaller dim for every field (the head sized to it as usual).

    Args:
        dims: embedding dims, one point each.
        quantize: extra table storages ("fp16", "int8", "int4"), one more point each per dim.
    """

    dims: list[int] = field(default_factory=lambda: [4, 8])
    quantize: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        p = [f"frontier.schemes.dim.dims: need dims >= 1, got {self.dims}"] if not self.dims or min(self.dims) < 1 else []
        return p + quantize_problems("frontier.schemes.dim.quantize", self.quantize)


class Dim:
    Config = DimConfig

    @staticmethod
    def check(exp) -> list[str]:
        return _one_dim(exp)

    @staticmethod
    def points(cfg: DimConfig, bench: Bench) -> list[Exported]:
        out = []
        for d in cfg.dims:
            model = replace(bench.model, embedding_dim=d)
            trained = bench.train(f"dim_{d}", lambda device=None, m=model: build_model(bench.spec, m, device=device), model)
            out += _stored(bench, f"dim_{d}", trained, cfg.quantize, "dim", {"dim": d}, f"d={d}")
        return out


@dataclass
class OthersConfig:
    """Every low-frequency id of a field (train count < frontier.threshold) shares one row,
    first-order weight included; the threshold is the frontier's.

    Args:
        quantize: extra table storages ("fp16", "int8", "int4"), one more point each.
    """

    quantize: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        return quantize_problems("frontier.schemes.others.quantize", self.quantize)


class Others:
    Config = OthersConfig

    @staticmethod
    def check(exp) -> list[str]:
        return _one_dim(exp)

    @staticmethod
    def points(cfg: OthersConfig, bench: Bench) -> list[Exported]:
        n_full = bench.n_full

        def build(device=None):
            emb = MappedEmbeddings(bench.spec, bench.model.embedding_dim, "others", n_full, _uses_first_order(bench),
                                   bench.model.init_scale, device)
            return build_model(bench.spec, bench.model, device=device, embeddings=emb)

        trained = bench.train("others", build)
        low = sum(f.num_embeddings - n_full[f.name] for f in bench.spec.fields)
        return _stored(bench, "others", trained, cfg.quantize, "others", {"threshold": bench.threshold, "low_frequency_ids": low},
                       f"t={bench.threshold}")


@dataclass
class HashConfig:
    """The hashing trick: each field's ids hashed into B rows (fields with <= B ids keep theirs).

    Args:
        buckets: B per field, one point each.
    """

    buckets: list[int] = field(default_factory=lambda: [64, 256])

    def validate(self) -> list[str]:
        return [f"frontier.schemes.hash.buckets: need B >= 1, got {self.buckets}"] if not self.buckets or min(self.buckets) < 1 else []


class Hash:
    Config = HashConfig

    @staticmethod
    def check(exp) -> list[str]:
        return _one_dim(exp)

    @staticmethod
    def points(cfg: HashConfig, bench: Bench) -> list[Exported]:
        out = []
        for b in cfg.buckets:
            def build(device=None, b=b):
                emb = MappedEmbeddings(bench.spec, bench.model.embedding_dim, "hash", b, _uses_first_order(bench),
                                       bench.model.init_scale, device)
                return build_model(bench.spec, bench.model, device=device, embeddings=emb)

            trained = bench.train(f"hash_{b}", build)
            out.append(Exported("hash", {"buckets": b}, f"B={b}", bench.seed, bench.export(f"hash_{b}", trained),
                                trained.seconds))
        return out


@dataclass
class LowDimConfig:
    """Mixed dims by frequency: low-frequency ids (train count < frontier.threshold) get
    rows of a smaller dim x, projected to the model's dim by a learned matrix per field.

    Args:
        low_dims: x, one point each (each < model.embedding_dim).
        quantize: extra table storages ("fp16", "int8", "int4"), one more point each per x.
    """

    low_dims: list[int] = field(default_factory=lambda: [3])
    quantize: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        p = [f"frontier.schemes.lowdim.low_dims: need x >= 1, got {self.low_dims}"] if not self.low_dims or min(self.low_dims) < 1 else []
        return p + quantize_problems("frontier.schemes.lowdim.quantize", self.quantize)


class LowDim:
    Config = LowDimConfig

    @staticmethod
    def check(exp) -> list[str]:
        too_big = [x for x in exp.frontier.scheme_configs["lowdim"].low_dims if x >= exp.model.embedding_dim]
        big = [f"frontier.schemes.lowdim.low_dims: {too_big} must be < model.embedding_dim {exp.model.embedding_dim}"]
        return _one_dim(exp) + (big if too_big else [])

    @staticmethod
    def points(cfg: LowDimConfig, bench: Bench) -> list[Exported]:
        n_full, out = bench.n_full, []
        for x in cfg.low_dims:
            def build(device=None, x=x):
                emb = TwoTierEmbeddings(bench.spec, bench.model.embedding_dim, x, n_full, _uses_first_order(bench),
                                        bench.model.init_scale, device)
                return build_model(bench.spec, bench.model, device=device, embeddings=emb)

            trained = bench.train(f"lowdim_{x}", build)
            out += _stored(bench, f"lowdim_{x}", trained, cfg.quantize, "lowdim", {"low_dim": x, "threshold": bench.threshold},
                           f"x={x}")
        return out


@dataclass
class QRConfig:
    """Quotient-remainder compositional embeddings (trainer.frontier.embeddings.QREmbeddings).

    Args:
        buckets: B, the remainder table's rows per field, one point each (fields with <= B
            ids keep theirs).
    """

    buckets: list[int] = field(default_factory=lambda: [64])

    def validate(self) -> list[str]:
        return [f"frontier.schemes.qr.buckets: need B >= 2, got {self.buckets}"] if not self.buckets or min(self.buckets) < 2 else []


class QR:
    Config = QRConfig

    @staticmethod
    def check(exp) -> list[str]:
        return _one_dim(exp)

    @staticmethod
    def points(cfg: QRConfig, bench: Bench) -> list[Exported]:
        out = []
        for b in cfg.buckets:
            def build(device=None, b=b):
                emb = QREmbeddings(bench.spec, bench.model.embedding_dim, b, _uses_first_order(bench), bench.model.init_scale, device)
                return build_model(bench.spec, bench.model, device=device, embeddings=emb)

            trained = bench.train(f"qr_{b}", build)
            out.append(Exported("qr", {"buckets": b}, f"QR B={b}", bench.seed, bench.export(f"qr_{b}", trained), trained.seconds))
        return out
