"""AutoDPQ end to end: pretrain (FE) → search → retrain → baselines → export → report.

    python -m trainer search --config configs/autodpq_ml100k.toml --out runs/autodpq [--resume] [section.key=value ...]

Stages write under OUT and, with --resume, a stage whose model.pt + metrics.json exist is
loaded instead of rerun:
  OUT/fe/                    the uncompressed model (FE baseline = AutoDPQ's pretrain step)
  OUT/search/                supernet.pt + search.json (history, timings)
  OUT/decisions.json         threshold, per field split and chosen (K, D), α
  OUT/retrain/               the AutoDPQ model: per field argmax α, no BN, all weights retrained
  OUT/baselines/<name>/      others | grid/k<K>_d<D> | random/trial_<i>
  OUT/bundle/                what the server loads: the AutoDPQ model in inference form
                             (codes + centroid tables, raw low-frequency rows dropped), one cluster
  OUT/report.json            AUC, logloss, embedding bytes and seconds per method; bundle checks
Every compressed model starts from the FE model (head, frequent rows, raw rare rows; see
trainer/models/dpq.py), so methods differ only in how the rare ids are stored. With
DPQ-SX at τ_KD = 1e-4 the raw rows get almost no gradient, so the codes come from those
pretrained rows. The job runs in one process. `train.storage = "local"` (the ML config)
trains plain TorchRec tables with Adam on everything, as the paper does; "sharded" trains
FE, retrain and baselines under DistributedModelParallel (FBGEMM fused optimizer on the
frequent-row tables; raw rows and centroids stay dense under Adam). The search always runs
unsharded (trainer.search.base.run_search).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.config import load_sections
from trainer.data.batches import iterate_batches
from trainer.data.config import DataConfig
from trainer.distributed import DistEnv, init_distributed
from trainer.jobs.search_stage import search_stage
from trainer.jobs.train import prepare, write_json
from trainer.models.ctr import CTRModel, ModelConfig, build_model
from trainer.models.dpq import OTHERS, CompressedLayout, compressed_model, dpq, served_model
from trainer.search.autodpq.method import AutoDPQ, AutoDPQConfig, choices_from, load_pretrained
from trainer.training import CTRTrain, TrainConfig, evaluate, fit, wrap
from trainer.unshard import load_full_state, unshard_into

METRIC_KEYS = ("test_auc", "test_logloss", "val_auc", "val_logloss")


@dataclass
class AutoDPQExperiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: AutoDPQConfig = field(default_factory=AutoDPQConfig)


def load_experiment(path: str, overrides: list[str]) -> AutoDPQExperiment:
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": AutoDPQConfig}
    return AutoDPQExperiment(**load_sections(path, sections, overrides))


def linear_bytes(model: CTRModel) -> int:
    """Stored bytes of the first-order weights (FM/DeepFM; never compressed)."""
    if model.linear is None:
        return 0
    return sum(c.num_embeddings * c.embedding_dim * 4 for c in model.linear.ebc.embedding_bag_configs())


def train_stage(ds, out: Path, build, init, exp: AutoDPQExperiment, env: DistEnv, resume: bool, log, **extra) -> tuple[CTRModel, dict]:
    """Build, initialise, fit (early stopping on val AUC) and score one model; reuse it on resume.

    Args:
        build: () → a fresh model.
        init: model → None, called once on a fresh (not resumed) model.
        extra: JSON-able facts stored in metrics.json.
    """
    torch.manual_seed(exp.train.seed)
    model = build()
    done = out / "model.pt"
    if resume and done.exists() and (out / "metrics.json").exists():
        model.load_state_dict(torch.load(done, weights_only=True))
        log(f"{out.name}: reusing {done}")
        return model.eval(), json.loads((out / "metrics.json").read_text())
    init(model)
    out.mkdir(parents=True, exist_ok=True)
    sharded = exp.train.storage == "sharded"
    start = time.perf_counter()
    if sharded:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train, opt = wrap(model, exp.train, env, log)
    if sharded:  # DMP drew fresh tables: put the initial weights (e.g. the FE model's) back
        load_full_state(train, state)
    result = fit(train, opt, ds, exp.train, env, out / "checkpoints", log, resume=False)
    seconds = time.perf_counter() - start
    val, test = evaluate(train, ds, "val", exp.train, env), evaluate(train, ds, "test", exp.train, env)
    if sharded:
        model = unshard_into(train, build())
    layout = model.embeddings.layout
    metrics = {
        "test_auc": test["auc"], "test_logloss": test["logloss"], "val_auc": val["auc"], "val_logloss": val["logloss"],
        "best_epoch": result.best_epoch, "epochs": len(result.history), "seconds": seconds,
        "embedding_params": layout.embedding_params, "embedding_bytes": layout.embedding_bytes,
        "linear_bytes": linear_bytes(model), **extra,
    }
    torch.save(model.state_dict(), done)
    write_json(out / "metrics.json", metrics)
    log(f"{out.name}: test auc {test['auc']:.4f} logloss {test['logloss']:.4f} (val auc {val['auc']:.4f}), "
        f"embedding bytes {layout.embedding_bytes:,}, {seconds:.0f}s")
    return model.eval(), metrics


def train_compressed(ds, out: Path, layout: CompressedLayout, fe: CTRModel, exp, env, resume, log) -> tuple[CTRModel, dict]:
    """A compressed model started from the FE model and trained (DPQ-SX straight-through)."""
    return train_stage(
        ds, out,
        lambda: compressed_model(ds.spec, exp.model, layout, exp.search.tau_kd),
        lambda m: load_pretrained(m, fe, exp.train.seed),
        exp, env, resume, log,
        layout=layout.to_json(),
    )


def best_of(runs: list[tuple[str, CTRModel, dict]]) -> dict:
    """The run with the best validation AUC; its metrics plus every run's summary and the total time."""
    name, _, best = max(runs, key=lambda r: r[2]["val_auc"])
    return {**best, "picked": name, "seconds": sum(m["seconds"] for _, _, m in runs),
            "runs": {n: {k: m[k] for k in (*METRIC_KEYS, "embedding_bytes", "seconds")} for n, _, m in runs}}


def baselines_stage(method: AutoDPQ, ds, fe: CTRModel, exp: AutoDPQExperiment, env, out: Path, resume: bool, log) -> dict:
    """Others, Grid and Random, each started from the FE model (see module docstring)."""
    results = {}
    coded = method.searched
    base = out / "baselines"
    if "others" in exp.search.baselines:
        _, results["others"] = train_compressed(ds, base / "others", method.layout({n: OTHERS for n in coded}), fe, exp, env, resume, log)
    if "grid" in exp.search.baselines:
        runs = []
        for k, d in exp.search.candidates:
            model, m = train_compressed(ds, base / "grid" / f"k{k}_d{d}", method.layout({n: dpq(k, d) for n in coded}), fe, exp, env, resume, log)
            runs.append((f"k{k}_d{d}", model, m))
        results["grid"] = best_of(runs)
    if "random" in exp.search.baselines:
        rng = np.random.default_rng((exp.train.seed, 17))
        runs = []
        for trial in range(exp.search.random_trials):
            picks = rng.integers(len(exp.search.candidates), size=len(coded))
            choices = {n: dpq(*exp.search.candidates[i]) for n, i in zip(coded, picks)}
            model, m = train_compressed(ds, base / "random" / f"trial_{trial}", method.layout(choices), fe, exp, env, resume, log)
            runs.append((f"trial_{trial}", model, m))
        results["random"] = best_of(runs)
    return results


def bundle_embedding_bytes(program: torch.nn.Module) -> dict:
    """Bytes of the embedding tensors a loaded bundle program holds (tables + codes)."""
    emb = {k: v for k, v in program.state_dict().items() if k.startswith("embeddings.")}
    return {"bytes": sum(v.numel() * v.element_size() for v in emb.values()),
            "tensors": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(emb.items())}}


def export_stage(ds, model: CTRModel, decisions: dict, metrics: dict, exp: AutoDPQExperiment, out: Path, log) -> dict:
    """Write OUT/bundle (one cluster: the AutoDPQ model in inference form), load it back,
    score test rows through serving's Predictor and compare with the trained model."""
    from serving.batch import FeatureBatch
    from serving.bundle import load_bundle, write_bundle
    from serving.predictor import Predictor

    served = served_model(model)
    first = next(iterate_batches(ds, "test", 64, shuffle=False, seed=0, epoch=0))
    version = f"autodpq-{ds.spec.dataset}-{exp.model.name}-s{exp.train.seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    dims = {n: 0 for n in ds.spec.names} | dict(zip(served.embeddings.layout.fields, served.embeddings.layout.dims))
    path = write_bundle(
        out / "bundle", spec=ds.spec, cluster_models=[served], router=None,
        example=(first.dense_features, first.sparse_features), version=version,
        metadata={"method": "autodpq", "model": exp.model.name, "threshold": decisions["threshold"],
                  "fields": decisions["fields"]},
        metrics={k: metrics[k] for k in ("test_auc", "test_logloss", "embedding_bytes")},
        dims=[dims], overwrite=True,
    )
    bundle = load_bundle(path, dataset=ds.spec.dataset)
    predictor = Predictor(bundle)
    diffs, served_diffs, rows = [], [], 0
    model.eval()
    with torch.no_grad():
        for b in iterate_batches(ds, "test", 1000, shuffle=False, seed=0, epoch=0):
            offline = torch.sigmoid(model(b.dense_features, b.sparse_features)).numpy()
            exported = torch.sigmoid(served(b.dense_features, b.sparse_features)).numpy()
            got = predictor.predict(FeatureBatch.from_inputs(ds.spec, b.dense_features, b.sparse_features)).probabilities
            diffs.append(float(np.abs(got - offline).max()))
            served_diffs.append(float(np.abs(got - exported).max()))
            rows += len(got)
    measured = bundle_embedding_bytes(bundle.models[0])
    reported = metrics["embedding_bytes"]
    check = {
        "path": str(path), "version": version, "rows_compared": rows,
        "max_abs_diff_served_vs_trained": max(diffs), "max_abs_diff_served_vs_inference_form": max(served_diffs),
        "embedding_bytes_in_bundle": measured["bytes"], "embedding_bytes_reported": reported,
        "relative_bytes_gap": abs(measured["bytes"] - reported) / reported, "tensors": measured["tensors"],
    }
    log(f"bundle {path}: {rows} test rows, max |served - trained| probability {max(diffs):.2e}; "
        f"embedding bytes in bundle {measured['bytes']:,} vs reported {reported:,}")
    return check


def run(exp: AutoDPQExperiment, out: str | Path, *, resume: bool = False, log=print) -> dict:
    env = init_distributed()
    if env.world_size > 1:
        raise SystemExit("the AutoDPQ job runs in one process (see trainer/jobs/autodpq.py); drop torchrun")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = prepare(exp, env, log)

    # (i) pretrain = the FE baseline
    fe, fe_m = train_stage(ds, out / "fe", lambda: build_model(ds.spec, exp.model), lambda m: None, exp, env, resume, log)
    method = AutoDPQ(exp.search, ds.spec, exp.model, ds.id_counts, pretrained=fe, seed=exp.train.seed)
    split = method.split
    log("frequency split (threshold %d): %s" % (exp.search.threshold, ", ".join(f"{t.name} {t.n_low}/{t.num_embeddings}" for t in split.tables)))

    # (ii) search
    search = search_stage(method, ds, exp.search, exp.train, env, out, resume, log)
    supernet = evaluate(CTRTrain(method.supernet), ds, "test", exp.train, env)
    decisions = method.derive()
    write_json(out / "decisions.json", decisions)
    log("chosen (K, D): " + ", ".join(f"{n} {f.get('k')}x{f.get('d')}" for n, f in decisions["fields"].items() if f["kind"] == "dpq"))

    # (iii) retrain with the argmax choices, no BN
    layout = method.layout({n: c for n, c in choices_from(decisions).items() if c.kind == "dpq"})
    model, auto = train_compressed(ds, out / "retrain", layout, fe, exp, env, resume, log)
    auto = {**auto, "search_seconds": search["seconds"], "retrain_seconds": auto["seconds"],
            "seconds": search["seconds"] + auto["seconds"],
            "supernet_test_auc": supernet["auc"], "supernet_test_logloss": supernet["logloss"]}

    methods = {"fe": fe_m, **baselines_stage(method, ds, fe, exp, env, out, resume, log), "autodpq": auto}
    fe_s = fe_m["seconds"]
    report = {
        "dataset": ds.spec.dataset,
        "model": exp.model.name,
        "seed": exp.train.seed,
        "threshold": exp.search.threshold,
        "split": {t.name: {"n_full": t.n_full, "n_low": t.n_low, "num_embeddings": t.num_embeddings} for t in split.tables},
        "coded_share_of_ids": sum(t.n_low for t in split.tables) / sum(t.num_embeddings for t in split.tables),
        "methods": methods,
        "seconds_relative_to_fe": {
            name: m["seconds"] / fe_s for name, m in methods.items()
        } | {"autodpq_search_only": search["seconds"] / fe_s,
             "autodpq_with_pretrain": (search["seconds"] + auto["retrain_seconds"] + fe_s) / fe_s},
        "search": {"best_epoch": search["best_epoch"], "best_val_auc": search["best_val_auc"], "seconds": search["seconds"]},
        "decisions": {n: f.get("k") and [f["k"], f["d"]] for n, f in decisions["fields"].items()},
        "config": asdict(exp),
    }
    if exp.search.export:
        report["bundle"] = export_stage(ds, model, decisions, auto, exp, out, log)
    write_json(out / "report.json", report)
    for name, m in methods.items():
        log(f"{name:8s} test auc {m['test_auc']:.4f} logloss {m['test_logloss']:.4f} embedding bytes {m['embedding_bytes']:,} "
            f"time {m['seconds'] / fe_s:.2f}x FE")
    log(f"report → {out / 'report.json'}")
    return report
