"""iHAS end to end: search → cluster → retrain one model per cluster → export → report.

    python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas [--resume]

Stages write their outputs under OUT and, with --resume, a stage whose output is
complete is loaded instead of rerun:
  OUT/search/supernet.pt + search.json   trained gates and base tables (search stage)
  OUT/decisions.json + OUT/clusters/     dims per field per cluster, centroids; row clusters
  OUT/retrain/cluster_<c>/               one model per cluster (checkpoints + metrics.json)
  OUT/bundle/                            what the server loads (router + cluster models)
  OUT/report.json                        Base vs iHAS-1 vs iHAS: AUC, logloss, params, time
Choices where the paper is vague are documented in trainer/search/ihas/*.py.
The search stage runs in one process (supernet on unsharded tables with Adam, as in the
paper); retraining uses the sharded stack (DMP + FBGEMM fused optimizer).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.config import load_sections
from trainer.data.batches import iterate_batches
from trainer.data.config import DataConfig
from trainer.data.view import RowSubset
from trainer.distributed import DistEnv, init_distributed
from trainer.jobs.train import prepare, table_stats, write_json
from trainer.metrics import summary
from trainer.models.ctr import ModelConfig, build_model
from trainer.search.base import run_search
from trainer.search.ihas.method import IHAS, IHASConfig
from trainer.training import CTRTrain, TrainConfig, fit, predict, wrap
from trainer.unshard import unshard_into

SPLITS = ("train", "val", "test")


@dataclass
class IHASExperiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: IHASConfig = field(default_factory=IHASConfig)


def load_experiment(path: str, overrides: list[str]) -> IHASExperiment:
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": IHASConfig}
    return IHASExperiment(**load_sections(path, sections, overrides))


def search_stage(method: IHAS, ds, exp: IHASExperiment, env: DistEnv, out: Path, resume: bool, log) -> dict:
    path = out / "search" / "supernet.pt"
    if resume and path.exists():
        method.build().load_state_dict(torch.load(path, weights_only=True))
        method.set_phase("eval")
        log(f"search: reusing {path}")
        return json.loads((out / "search" / "search.json").read_text())
    result = run_search(method, ds, exp.search, exp.train, env, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(method.supernet.state_dict(), path)
    write_json(out / "search" / "search.json", result)
    return result


def cluster_stage(method: IHAS, ds, exp: IHASExperiment, out: Path, log) -> tuple[dict, torch.nn.Module, dict]:
    decisions, router = method.derive(ds, exp.train.eval_batch_size, exp.train.seed, log)
    assign = {split: route(router, ds, split, exp.train.eval_batch_size) for split in SPLITS}
    (out / "clusters").mkdir(exist_ok=True)
    for split, a in assign.items():
        np.save(out / "clusters" / f"{split}.npy", a)
    write_json(out / "decisions.json", decisions)
    for c in decisions["clusters"]:
        log(f"cluster {c['id']}: {c['train_rows']} train rows, dims {c['dims']}")
    return decisions, router, assign


@torch.no_grad()
def route(router, ds, split: str, batch_size: int) -> np.ndarray:
    parts = [router(b.dense_features, b.sparse_features).numpy() for b in iterate_batches(ds, split, batch_size, shuffle=False, seed=0, epoch=0)]
    return np.concatenate(parts).astype(np.int64)


def retrain_cluster(ds, assign: dict, c: int, dims: dict, exp: IHASExperiment, env: DistEnv, out: Path, log):
    """Train the cluster's model on the cluster's rows; returns (plain model, test probs, metrics)."""
    view = RowSubset(ds, {s: assign[s] == c for s in SPLITS})
    model = build_model(ds.spec, exp.model, dims=dims, device=torch.device("meta"))
    stats = table_stats(model)
    train, opt = wrap(model, exp.train, env, log)
    result = fit(train, opt, view, exp.train, env, out / "checkpoints", log, resume=False)
    probs, labels = predict(train, view, "test", exp.train, env)
    plain = unshard_into(train, build_model(ds.spec, exp.model, dims=dims))
    metrics = {"cluster": c, "dims": dims, **stats, "best_val_auc": result.best_val_auc, "test_rows": len(labels),
               "samples_per_s": result.samples_per_s}
    if len(np.unique(labels)) == 2:
        metrics.update({f"test_{k}": v for k, v in summary(probs, labels).items()})
    write_json(out / "metrics.json", metrics)
    return plain, probs, metrics


@torch.no_grad()
def seconds_per_10k(stages: list[tuple[torch.nn.Module, object]], rows: int, batch: int = 1024, repeats: int = 3) -> float:
    """Median seconds (one thread) to run each (module, dataset view) over its test rows, per 10k rows.

    iHAS is timed as router over all rows + each cluster model over its own rows, i.e. what a
    split-by-cluster predictor computes, without the split/merge bookkeeping.
    """
    loaded = [(m, list(iterate_batches(v, "test", batch, shuffle=False, seed=0, epoch=0))) for m, v in stages]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for module, batches in loaded:
            for b in batches:
                module(b.dense_features, b.sparse_features)
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return float(np.median(times)) / rows * 10_000


def export_stage(ds, decisions: dict, router, models: list, report: dict, exp: IHASExperiment, out: Path, log) -> dict:
    """Write OUT/bundle (router + one model per cluster) and check it reproduces the in-memory scores."""
    from serving.bundle import load_bundle, write_bundle

    first = next(iterate_batches(ds, "test", 64, shuffle=False, seed=0, epoch=0))
    version = f"ihas-{ds.spec.dataset}-s{exp.train.seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    metrics = {k: report["ihas"][k] for k in ("test_auc", "test_logloss", "embedding_params")}
    path = write_bundle(
        out / "bundle",
        spec=ds.spec,
        cluster_models=models,
        router=router if len(models) > 1 else None,
        example=(first.dense_features, first.sparse_features),
        version=version,
        metadata={"method": "ihas", "centroids": decisions["centroids"], "threshold": decisions["threshold"]},
        metrics=metrics,
        dims=[c["dims"] for c in decisions["clusters"]],
        overwrite=True,
    )
    bundle = load_bundle(path)
    diffs = []
    with torch.no_grad():
        for b in itertools.islice(iterate_batches(ds, "test", 500, shuffle=False, seed=0, epoch=0), 2):
            want_c = router(b.dense_features, b.sparse_features) if len(models) > 1 else torch.zeros(len(b.labels), dtype=torch.long)
            want = torch.stack([m(b.dense_features, b.sparse_features) for m in models], 1).gather(1, want_c[:, None]).squeeze(1)
            got_c = bundle.router(b.dense_features, b.sparse_features)
            got = torch.stack([m(b.dense_features, b.sparse_features) for m in bundle.models], 1).gather(1, got_c[:, None]).squeeze(1)
            assert torch.equal(got_c, want_c), "bundle router disagrees with the in-memory router"
            diffs.append(float((torch.sigmoid(got) - torch.sigmoid(want)).abs().max()))
    log(f"bundle {path} (version {version}): max |served - in-memory| probability on 1000 test rows {max(diffs):.2e}")
    return {"path": str(path), "version": version, "max_abs_diff_1000_rows": max(diffs)}


def run(exp: IHASExperiment, out: str | Path, *, resume: bool = False, log=print) -> dict:
    env = init_distributed()
    if env.world_size > 1:
        raise SystemExit("the iHAS search job runs in one process (see trainer/jobs/ihas.py); drop torchrun")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = prepare(exp, env, log)
    # The search base model has every field at embedding_dim; exp.model's per-field dims are ignored.
    method = IHAS(exp.search, ds.spec, exp.model)
    search = search_stage(method, ds, exp, env, out, resume, log)
    supernet_test = summary(*predict(CTRTrain(method.supernet), ds, "test", exp.train, env))
    decisions, router, assign = cluster_stage(method, ds, exp, out, log)

    test_labels = ds.labels[ds.indices("test")].astype(np.float32)
    merged = np.zeros(len(test_labels), dtype=np.float32)
    models, per_cluster, timed = [], [], [(router, ds)]
    for c in decisions["clusters"]:
        if c["train_rows"] == 0 or not any(c["dims"].values()):
            raise RuntimeError(f"cluster {c['id']} is empty or keeps no dims: lower search.clusters or search.l0")
        cid = c["id"]
        plain, probs, metrics = retrain_cluster(ds, assign, cid, c["dims"], exp, env, out / "retrain" / f"cluster_{cid}", log)
        merged[assign["test"] == cid] = probs
        models.append(plain)
        per_cluster.append(metrics)
        timed.append((plain, RowSubset(ds, {"test": assign["test"] == cid})))
    ihas_test = summary(merged, test_labels)

    base_dims = {n: exp.model.embedding_dim for n in ds.spec.names}
    everyone = {s: np.zeros(len(ds.indices(s)), dtype=np.int64) for s in SPLITS}
    base_model, _, base = retrain_cluster(ds, everyone, 0, base_dims, exp, env, out / "base", log)

    report = {
        "dataset": ds.spec.dataset,
        "seed": exp.train.seed,
        "base": {**base, "seconds_per_10k_rows": seconds_per_10k([(base_model, ds)], len(test_labels))},
        "ihas": {
            "test_auc": ihas_test["auc"],
            "test_logloss": ihas_test["logloss"],
            "embedding_params": sum(m["embedding_params"] for m in per_cluster),
            "router_embedding_params": method.supernet.base.embeddings.layout.embedding_params,
            "seconds_per_10k_rows": seconds_per_10k(timed, len(test_labels)),
            "clusters": per_cluster,
        },
        "ihas_1_supernet": {"test_auc": supernet_test["auc"], "test_logloss": supernet_test["logloss"]},
        "search": {k: search[k] for k in ("best_epoch", "best_val_auc")} | {"open_fraction": decisions["open_fraction"]},
        "config": asdict(exp),
    }
    if ds.groups is not None:  # synthetic data: the planted sub-populations are known
        groups = np.asarray(ds.groups[ds.indices("test")])
        hits = sum(np.bincount(groups[assign["test"] == c]).max() for c in np.unique(assign["test"]))
        report["ihas"]["cluster_purity"] = float(hits / len(groups))
        log(f"cluster purity vs planted sub-populations (test rows): {report['ihas']['cluster_purity']:.3f}")
    report["bundle"] = export_stage(ds, decisions, router, models, report, exp, out, log)
    write_json(out / "report.json", report)
    log(f"Base  test auc {base['test_auc']:.4f} logloss {base['test_logloss']:.4f}")
    log(f"iHAS-1 (search-stage model) test auc {supernet_test['auc']:.4f} logloss {supernet_test['logloss']:.4f}")
    log(f"iHAS  test auc {ihas_test['auc']:.4f} logloss {ihas_test['logloss']:.4f} → {out / 'report.json'}")
    return report
