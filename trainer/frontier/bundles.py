"""A frontier point's life: train one model, export it as a real bundle, measure the bundle.

Every figure of a point is read from its written bundle, never from a config: the bytes
are `serving.bundle.served_bytes` (every tensor the bundle's programs hold: tables,
first-order weights, codes, centroids, projections, padding columns, dense layers, and the
constants the export lifts out of modules, which for quantized tables are FBGEMM's packed
rows); `stored_bytes`, a cross-check, is every tensor file in the program archives. The
test AUC and logloss come from scoring the whole test split through serving's `Predictor`
over the loaded bundle (so quantized tables are scored as served); the scoring time is
measured as `trainer.bench_served` measures it (see `time_bundles`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from serving.batch import FeatureBatch
from serving.bundle import load_bundle, served_bytes
from serving.bundle.size import archived_tensor_bytes
from serving.predictor import Predictor
from trainer.bench_served import measure, test_batches
from trainer.data.batches import iterate_batches
from trainer.decisions import Decisions, uniform
from trainer.distributed import DistEnv
from trainer.jobs.export import export_bundle
from trainer.jobs.report import tensor_bytes
from trainer.jobs.retrain import Trained, train_cluster
from trainer.metrics import summary
from trainer.models.build import served_form
from trainer.models.ctr import ModelConfig
from trainer.models.layout import n_full_ids
from trainer.training import Log, TrainConfig

Build = Callable[..., torch.nn.Module]  # (device=None) → a fresh model


@dataclass
class Exported:
    """A bundle written for one point, before it is measured.

    Args:
        scheme: the scheme's name (one legend entry of the plot).
        settings: what distinguishes the point within its scheme (JSON).
        label: short text for the plot ("B=64", "int8").
        seed: train seed.
        bundle: the bundle directory.
        train_seconds: wall seconds of the training behind it (search included).
    """

    scheme: str
    settings: dict
    label: str
    seed: int
    bundle: Path
    train_seconds: float


class Bench:
    """Trains, exports and caches the points of one seed under `out` (OUT/seed_<s>/<key>/).

    Args:
        ds: the cached dataset.
        exp: the frontier experiment (data, model = the FE model schemes derive theirs from,
            train, frontier settings such as the low-frequency threshold).
        seed: train seed of this bench's points.
        env: the process group.
        out: this seed's directory.
        resume: reuse trained models and bundles already written.
        log: progress lines.
    """

    def __init__(self, ds, exp, seed: int, env: DistEnv, out: Path, resume: bool, log: Log):
        self.ds, self.exp, self.seed, self.env = ds, exp, seed, env
        self.model: ModelConfig = exp.model
        self.train_cfg: TrainConfig = replace(exp.train, seed=seed)
        self.threshold: int = exp.frontier.threshold
        self.out, self.resume, self.log = out, resume, log
        self.spec = ds.spec
        self._trained: dict[str, Trained] = {}

    @property
    def n_full(self) -> dict[str, int]:
        """field → 1 + ids with train count >= threshold (the rest are low-frequency)."""
        return {f.name: n_full_ids(self.ds.id_counts[f.name], self.threshold, f.name) for f in self.spec.fields}

    def train(self, key: str, build: Build, model: ModelConfig | None = None) -> Trained:
        """Train `build()` on every training row with the stack's `fit` (early stopping on
        validation, per-epoch checkpoints); a key trained before in this run is reused."""
        if key in self._trained:
            return self._trained[key]
        model = model or self.model
        every = {s: np.zeros(len(self.ds.indices(s)), dtype=np.int64) for s in ("train", "val", "test")}
        cluster = uniform(key, self.spec.names, model.field_dims(self.spec), len(every["train"])).clusters[0]
        self.log(f"== {key} (seed {self.seed})")
        plain, val, test, metrics = train_cluster(self.ds, every, cluster, model, self.train_cfg, self.env,
                                                  self.out / key / "model", self.resume, self.log, build=build)
        probs = {"val": val, "test": test}
        m = {f"{s}_{k}": v for s, p in probs.items() for k, v in summary(p, self.ds.labels[self.ds.indices(s)]).items()}
        decisions = Decisions(f"frontier:{key}", (cluster,), details={"frontier_scheme": key})
        trained = Trained(decisions, [plain], [metrics], m, metrics["seconds"], probs)
        self._trained[key] = trained
        return trained

    def export(self, key: str, trained: Trained, quantize: str = "none") -> Path:
        """Write (or on resume reuse) OUT/seed_<s>/<key>/bundle from `trained`, its tables
        stored as `quantize` says; float bundles are checked against the offline model."""
        where = self.out / key / "bundle"
        if self.resume and (where / "manifest.json").exists():
            self.log(f"{key}: reusing {where}")
            return where
        trained = replace(trained, decisions=trained.decisions.replace(quantize=quantize))
        served = [served_form(m) for m in trained.models]
        row = {**{k: trained.metrics[k] for k in ("test_auc", "test_logloss")},
               "embedding_params": sum(m.embeddings.layout.embedding_params + m.first_order_params for m in trained.models),
               "served_bytes": tensor_bytes(served)["total"]}
        export_bundle(self.ds, trained, row, None, self.seed, where, self.log)
        return where


@torch.no_grad()
def score_bundle(path: Path, ds, batch_size: int = 4096) -> dict:
    """Test AUC / logloss of the whole test split scored through the loaded bundle, its bytes,
    and its test probabilities ("probs", in test-row order; not written to frontier.json)."""
    predictor = Predictor(load_bundle(path, dataset=ds.spec.dataset))
    probs = []
    for b in iterate_batches(ds, "test", batch_size, shuffle=False, seed=0, epoch=0):
        probs.append(predictor.predict(FeatureBatch.from_inputs(ds.spec, b.dense_features, b.sparse_features)).probabilities)
    labels = ds.labels[ds.indices("test")]
    probs = np.concatenate(probs)
    m = summary(probs, labels)
    size = served_bytes(path)
    return {"test_auc": m["auc"], "test_logloss": m["logloss"], "served_bytes": size["total"],
            "served_table_bytes": size["embedding"], "stored_bytes": archived_tensor_bytes(path), "probs": probs}


def time_bundles(paths: dict[str, Path], ds, batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds per 10k test rows of each bundle, as `trainer.bench_served` measures: loaded as
    the server loads it, rows encoded beforehand, `Predictor.predict` over the test split's full
    batches on one thread, passes interleaved over bundles, the median pass."""
    predictors = {k: Predictor(load_bundle(p, dataset=ds.spec.dataset)) for k, p in paths.items()}
    batches = test_batches(ds, batch_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        medians = measure(predictors, {batch_size: batches}, repeats)
    finally:
        torch.set_num_threads(threads)
    rows = batch_size * len(batches)
    return {k: medians[(k, batch_size)] / rows * 10_000 for k in paths}


def bundle_decisions(path: Path) -> dict:
    """The decisions record the bundle's manifest carries."""
    return json.loads((Path(path) / "manifest.json").read_text())["metadata"]["decisions"]
