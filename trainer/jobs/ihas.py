"""iHAS end to end: search → cluster → retrain one model per cluster → ablations → export → report.

    python -m trainer search --config configs/ihas_ml100k.toml --out runs/ihas [--resume]

Stages write their outputs under OUT and, with --resume, a stage whose output is
complete is loaded instead of rerun:
  OUT/search/supernet.pt + search.json   trained gates and base tables (search stage)
  OUT/decisions.json + OUT/clusters/     dims per field per cluster, centroids; row clusters
  OUT/retrain/cluster_<c>/               one model per cluster (model.pt, test_probs.npy, metrics.json)
  OUT/base/cluster_0/                    Base: every field at full dim, all rows
  OUT/ablations/ihas_{2,3,4}/            iHAS-2 (K = 1 from the same search), iHAS-3 (search
                                         without polarization), iHAS-4 (search with shared gates)
  OUT/transfer/<model>/                  other base models with the frozen gates' dims + router
  OUT/variants/ihas_warm/                iHAS-warm (search.warm_variant): cluster models
                                         started from the supernet's weights
  OUT/bundle/                            what the server loads (router + cluster models)
  OUT/plots/                             dims per field per cluster; gate-probability histograms
  OUT/report.json                        per method: test AUC, logloss, params, s per 10k rows
iHAS-1 is the search-stage model itself (deterministic gates), scored without retraining.
Choices where the paper is vague are documented in trainer/search/ihas/*.py.
The search stage runs in one process (supernet on unsharded tables with Adam, as in the
paper); retraining uses the sharded stack (DMP + FBGEMM fused optimizer).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from trainer.config import ConfigError, load_sections
from trainer.data.batches import iterate_batches
from trainer.data.config import DataConfig
from trainer.data.view import RowSubset
from trainer.distributed import DistEnv, init_distributed
from trainer.jobs.ihas_plots import write_plots
from trainer.jobs.search_stage import search_stage
from trainer.jobs.train import prepare, table_stats, write_json
from trainer.metrics import summary
from trainer.models.ctr import CTRModel, ModelConfig, build_model
from trainer.search.ihas.method import IHAS, IHASConfig
from trainer.search.ihas.warm_start import WARM_MODELS, warm_start_state
from trainer.training import CTRTrain, TrainConfig, fit, predict, wrap
from trainer.unshard import load_full_state, unshard_into

SPLITS = ("train", "val", "test")


@dataclass
class IHASExperiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: IHASConfig = field(default_factory=IHASConfig)


def load_experiment(path: str, overrides: list[str]) -> IHASExperiment:
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": IHASConfig}
    exp = IHASExperiment(**load_sections(path, sections, overrides))
    if exp.search.warm_variant and exp.model.name not in WARM_MODELS:
        raise ConfigError(str(path), [f"search.warm_variant: needs model.name in {list(WARM_MODELS)} "
                                      f"(an MLP-only head), got {exp.model.name!r}"])
    return exp


def cluster_stage(method: IHAS, ds, exp: IHASExperiment, out: Path, log, clusters: int | None = None) -> tuple[dict, torch.nn.Module, dict]:
    """Deterministic masks → K-means → per-cluster dims; every row of every split routed."""
    decisions, router = method.derive(ds, exp.train.eval_batch_size, exp.train.seed, log, clusters)
    assign = {split: route(router, ds, split, exp.train.eval_batch_size) for split in SPLITS}
    (out / "clusters").mkdir(parents=True, exist_ok=True)
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


def retrain_cluster(ds, assign: dict, c: int, dims: dict, model_cfg: ModelConfig, exp: IHASExperiment, env: DistEnv,
                    out: Path, resume: bool, log, init_state: dict | None = None):
    """Train the cluster's model on the cluster's rows; returns (plain model, test probs, metrics).

    With `resume`, a finished model (OUT/model.pt + test_probs.npy + metrics.json) is reused.
    `init_state`: full weights to start from (iHAS-warm) instead of a fresh draw.
    """
    files = out / "model.pt", out / "test_probs.npy", out / "metrics.json"
    if resume and all(f.exists() for f in files):
        plain = build_model(ds.spec, model_cfg, dims=dims)
        plain.load_state_dict(torch.load(files[0], weights_only=True))
        log(f"retrain: reusing {out}")
        return plain.eval(), np.load(files[1]), json.loads(files[2].read_text())
    torch.manual_seed(exp.train.seed)
    view = RowSubset(ds, {s: assign[s] == c for s in SPLITS})
    model = build_model(ds.spec, model_cfg, dims=dims, device=torch.device("meta"))
    stats = table_stats(model)
    train, opt = wrap(model, exp.train, env, log)
    if init_state is not None:
        load_full_state(train, init_state)
    result = fit(train, opt, view, exp.train, env, out / "checkpoints", log, resume=False)
    probs, labels = predict(train, view, "test", exp.train, env)
    plain = unshard_into(train, build_model(ds.spec, model_cfg, dims=dims)).eval()
    metrics = {"cluster": c, "model": model_cfg.name, "dims": dims, **stats, "best_val_auc": result.best_val_auc,
               "train_rows": int((assign["train"] == c).sum()), "test_rows": len(labels), "samples_per_s": result.samples_per_s}
    if len(np.unique(labels)) == 2:
        metrics.update({f"test_{k}": v for k, v in summary(probs, labels).items()})
    torch.save(plain.state_dict(), files[0])
    np.save(files[1], probs)
    write_json(files[2], metrics)
    return plain, probs, metrics


@dataclass
class Retrained:
    """A variant's retrained models (one per cluster) and their merged test scores."""

    models: list
    clusters: list[dict]
    test: dict
    timed: list  # (module, dataset view) pairs that scoring the test split runs

    @property
    def embedding_params(self) -> int:
        return sum(c["embedding_params"] for c in self.clusters)


def retrain_all(ds, decisions: dict, assign: dict, model_cfg: ModelConfig, exp: IHASExperiment, env: DistEnv, out: Path,
                resume: bool, log, router=None, warm_from: CTRModel | None = None) -> Retrained:
    """One model per cluster of `decisions`, each on its rows; test scores merged in row order.

    `warm_from`: the supernet's base network; each cluster model then starts from its
    weights cut to the cluster's kept columns (trainer.search.ihas.warm_start).
    """
    test_labels = ds.labels[ds.indices("test")].astype(np.float32)
    merged = np.zeros(len(test_labels), dtype=np.float32)
    models, clusters, timed = [], [], ([(router, ds)] if router is not None and len(decisions["clusters"]) > 1 else [])
    for c in decisions["clusters"]:
        if c["train_rows"] == 0 or not any(c["dims"].values()):
            raise RuntimeError(f"cluster {c['id']} is empty or keeps no dims: lower search.clusters or search.l0")
        cid = c["id"]
        log(f"retrain {model_cfg.name} for cluster {cid} ({c['train_rows']} train rows) → {out / f'cluster_{cid}'}")
        init = None
        if warm_from is not None:
            init = warm_start_state(warm_from, build_model(ds.spec, model_cfg, dims=c["dims"]), c["kept"])
        plain, probs, metrics = retrain_cluster(ds, assign, cid, c["dims"], model_cfg, exp, env, out / f"cluster_{cid}", resume, log, init)
        merged[assign["test"] == cid] = probs
        models.append(plain)
        clusters.append(metrics)
        timed.append((plain, RowSubset(ds, {"test": assign["test"] == cid})))
    m = summary(merged, test_labels)
    return Retrained(models, clusters, {"test_auc": m["auc"], "test_logloss": m["logloss"]}, timed)


def one_cluster(ds) -> dict:
    return {s: np.zeros(len(ds.indices(s)), dtype=np.int64) for s in SPLITS}


def base_decisions(ds, d: int) -> dict:
    """Every field at the full dim, one cluster of all rows: the Base model."""
    return {"clusters": [{"id": 0, "train_rows": len(ds.indices("train")), "dims": {n: d for n in ds.spec.names}}]}


def row_of(r: Retrained, rows: int) -> dict:
    """A report row: test metrics, embedding params, inference seconds per 10k test rows."""
    return {**r.test, "embedding_params": r.embedding_params, "seconds_per_10k_rows": seconds_per_10k(r.timed, rows),
            "dims": [c["dims"] for c in r.clusters]}


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


def export_stage(ds, decisions: dict, router, models: list, result: dict, exp: IHASExperiment, out: Path, log) -> dict:
    """Write OUT/bundle (router + one model per cluster) and check it reproduces the in-memory scores."""
    from serving.bundle import load_bundle, write_bundle

    first = next(iterate_batches(ds, "test", 64, shuffle=False, seed=0, epoch=0))
    version = f"ihas-{ds.spec.dataset}-s{exp.train.seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    metrics = {k: result[k] for k in ("test_auc", "test_logloss", "embedding_params")}
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


def searched_variant(name: str, cfg: IHASConfig, ds, exp: IHASExperiment, env: DistEnv, out: Path, resume: bool, log,
                     clusters: int | None = None):
    """Search with `cfg`, then cluster: (method, search history, decisions, router, row assignment)."""
    log(f"== {name}: search → {out}")
    method = IHAS(cfg, ds.spec, exp.model)
    search = search_stage(method, ds, method.cfg, exp.train, env, out, resume, log)
    decisions, router, assign = cluster_stage(method, ds, exp, out, log, clusters)
    return method, search, decisions, router, assign


def run(exp: IHASExperiment, out: str | Path, *, resume: bool = False, log=print) -> dict:
    env = init_distributed()
    if env.world_size > 1:
        raise SystemExit("the iHAS search job runs in one process (see trainer/jobs/ihas.py); drop torchrun")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = prepare(exp, env, log)
    rows = len(ds.indices("test"))
    d = exp.model.embedding_dim
    # The search base model has every field at embedding_dim; exp.model's per-field dims are ignored.
    method, search, decisions, router, assign = searched_variant("iHAS", exp.search, ds, exp, env, out, resume, log)
    supernet = CTRTrain(method.supernet)
    supernet_test = summary(*predict(supernet, ds, "test", exp.train, env))
    ihas = retrain_all(ds, decisions, assign, exp.model, exp, env, out / "retrain", resume, log, router)
    log("== Base: every field at full dim, all rows")
    base = retrain_all(ds, base_decisions(ds, d), one_cluster(ds), exp.model, exp, env, out / "base", resume, log)

    methods = {
        "base": row_of(base, rows),
        "ihas_1": {"test_auc": supernet_test["auc"], "test_logloss": supernet_test["logloss"],
                   "embedding_params": method.supernet.base.embeddings.layout.embedding_params,
                   "seconds_per_10k_rows": seconds_per_10k([(method.supernet, ds)], rows)},
    }
    histograms = {"iHAS": decisions["prob_histogram"]}
    if exp.search.ablations:
        log("== iHAS-2: one model retrained from the same search (K = 1)")
        one_dec, _ = method.derive(ds, exp.train.eval_batch_size, exp.train.seed, log, clusters=1)
        (out / "ablations" / "ihas_2").mkdir(parents=True, exist_ok=True)
        write_json(out / "ablations" / "ihas_2" / "decisions.json", one_dec)
        methods["ihas_2"] = row_of(retrain_all(ds, one_dec, one_cluster(ds), exp.model, exp, env, out / "ablations" / "ihas_2", resume, log), rows)
        no_pol = replace(exp.search, polarization=0.0)
        _, _, dec3, router3, assign3 = searched_variant("iHAS-3 (no polarization)", no_pol, ds, exp, env, out / "ablations" / "ihas_3", resume, log)
        methods["ihas_3"] = row_of(retrain_all(ds, dec3, assign3, exp.model, exp, env, out / "ablations" / "ihas_3", resume, log, router3), rows)
        histograms["iHAS-3 (no polarization)"] = dec3["prob_histogram"]
        shared = replace(exp.search, shared_gates=True)
        _, _, dec4, _, assign4 = searched_variant("iHAS-4 (shared gates)", shared, ds, exp, env, out / "ablations" / "ihas_4", resume, log, clusters=1)
        methods["ihas_4"] = row_of(retrain_all(ds, dec4, assign4, exp.model, exp, env, out / "ablations" / "ihas_4", resume, log), rows)
    methods["ihas"] = {**row_of(ihas, rows), "router_embedding_params": method.supernet.base.embeddings.layout.embedding_params,
                       "clusters": ihas.clusters}
    if exp.search.warm_variant:
        log("== iHAS-warm: the same clusters and dims, each model started from the supernet's weights")
        warm = retrain_all(ds, decisions, assign, exp.model, exp, env, out / "variants" / "ihas_warm", resume, log, router,
                           warm_from=method.supernet.base)
        methods["ihas_warm"] = {**row_of(warm, rows), "clusters": warm.clusters}

    transfer = {}
    for name in exp.search.transfer_models:
        log(f"== transfer: {name} with the frozen gates' dims and router")
        mcfg = replace(exp.model, name=name)
        t_out = out / "transfer" / name
        t_base = retrain_all(ds, base_decisions(ds, d), one_cluster(ds), mcfg, exp, env, t_out / "base", resume, log)
        t_ihas = retrain_all(ds, decisions, assign, mcfg, exp, env, t_out, resume, log, router)
        transfer[name] = {"base": row_of(t_base, rows), "ihas": row_of(t_ihas, rows)}

    report = {
        "dataset": ds.spec.dataset,
        "seed": exp.train.seed,
        "model": exp.model.name,
        "methods": methods,
        "transfer": transfer,
        "search": {k: search[k] for k in ("best_epoch", "best_val_auc", "seconds")} | {"open_fraction": decisions["open_fraction"]},
        "config": asdict(exp),
    }
    if ds.groups is not None:  # synthetic data: the planted sub-populations are known
        groups = np.asarray(ds.groups[ds.indices("test")])
        hits = sum(np.bincount(groups[assign["test"] == c]).max() for c in np.unique(assign["test"]))
        report["cluster_purity"] = float(hits / len(groups))
        log(f"cluster purity vs planted sub-populations (test rows): {report['cluster_purity']:.3f}")
    report["bundle"] = export_stage(ds, decisions, router, ihas.models, methods["ihas"], exp, out, log)
    report["plots"] = write_plots(decisions, histograms, out / "plots")
    write_json(out / "report.json", report)
    log(format_report(report))
    log(f"report → {out / 'report.json'}")
    return report


NAMES = {"base": "Base", "ihas_1": "iHAS-1", "ihas_2": "iHAS-2", "ihas_3": "iHAS-3", "ihas_4": "iHAS-4", "ihas": "iHAS",
         "ihas_warm": "iHAS-warm"}


def format_report(report: dict) -> str:
    """The methods and transfer tables as aligned text."""
    lines = [f"{'method':9} {'test AUC':>9} {'logloss':>8} {'emb params':>11} {'s/10k rows':>10}"]
    for key, name in NAMES.items():
        if key in report["methods"]:
            m = report["methods"][key]
            lines.append(f"{name:9} {m['test_auc']:9.4f} {m['test_logloss']:8.4f} {m['embedding_params']:11,} {m['seconds_per_10k_rows']:10.4f}")
    for name, t in report["transfer"].items():
        lines.append(f"transfer {name:10} Base {t['base']['test_auc']:.4f} → iHAS {t['ihas']['test_auc']:.4f} "
                     f"(params {t['base']['embedding_params']:,} → {t['ihas']['embedding_params']:,})")
    return "\n".join(lines)
