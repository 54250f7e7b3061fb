"""Train one CTR model and write its test metrics.

    python -m trainer train --config configs/deepfm_ml100k.toml --out runs/deepfm
    torchrun --nproc_per_node 2 -m trainer train --config configs/deepfm_ml100k.toml --out runs/deepfm2

Writes OUT/metrics.json and OUT/checkpoints/ (one per epoch, `--resume` continues from
the newest complete one). Rank 0 alone logs and writes files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torchrec import EmbeddingBagCollection

from trainer.config import ConfigError, load_sections
from trainer.data.config import DataConfig, dense_input_problems, load_dataset
from trainer.distributed import DistEnv, init_distributed
from trainer.jobs.history import write_history
from trainer.jobs.rundir import check_data, open_run
from trainer.jsonfile import write_json
from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig
from trainer.training import TrainConfig, evaluate, fit, wrap


@dataclass
class TrainExperiment:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_experiment(path: str, overrides: list[str]) -> TrainExperiment:
    exp = TrainExperiment(**load_sections(path, {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}, overrides))
    problems = dense_input_problems(exp.data, exp.model.reads_dense)
    if problems:
        raise ConfigError(str(path), problems)
    return exp


def prepare(exp: TrainExperiment, env: DistEnv, log):
    """Seeded process state + the dataset (rank 0 builds the cache, the others reuse it)."""
    if exp.train.threads:
        torch.set_num_threads(exp.train.threads)
    torch.manual_seed(exp.train.seed)
    if env.is_main:
        ds = load_dataset(exp.data, log=log)
    dist.barrier()
    if not env.is_main:
        ds = load_dataset(exp.data, log=lambda _: None)
    return ds


def quiet(_: str) -> None:
    """The log of ranks other than 0."""


def table_stats(model) -> dict[str, int]:
    """Logical parameters (embeddings + one first-order weight per id) and stored bytes."""
    configs = [c for m in model.modules() if isinstance(m, EmbeddingBagCollection) for c in m.embedding_bag_configs()]
    params = model.embeddings.layout.embedding_params + model.first_order_params
    return {"embedding_params": params, "embedding_bytes": sum(c.num_embeddings * c.embedding_dim * 4 for c in configs)}


RUN_FILES = ("metrics.json", "checkpoints/LATEST")


def run(exp: TrainExperiment, out: str | Path, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    env = init_distributed()
    out = Path(out)
    log = open_run(out, exp, resume=resume, overwrite=overwrite, holds=RUN_FILES, env=env, log=log if env.is_main else quiet)
    ds = prepare(exp, env, log)
    check_data(out, ds.meta["fingerprint"], env)
    sharded = exp.train.storage == "sharded"
    if exp.train.storage == "local" and env.world_size > 1 and env.is_main:
        log("train.storage = 'local' under torchrun: tables are replicated and synchronised by DDP")
    model = build_model(ds.spec, exp.model, device=torch.device("meta") if sharded else env.device)
    stats = table_stats(model)
    train, optimizer = wrap(model, exp.train, env, log)
    result = fit(train, optimizer, ds, exp.train, env, out / "checkpoints", log, resume=resume)
    val = evaluate(train, ds, "val", exp.train, env)
    test = evaluate(train, ds, "test", exp.train, env)
    metrics = {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "best_epoch": result.best_epoch,
        **stats,
        "train_samples_per_s": result.samples_per_s,
        "world_size": env.world_size,
        "history": result.history,
        "config": asdict(exp),
    }
    if env.is_main:
        write_json(out / "metrics.json", metrics)
        write_history(result.history, out)
        log(f"test auc {test['auc']:.4f} logloss {test['logloss']:.4f} (val auc {val['auc']:.4f}) → {out / 'metrics.json'}")
    return metrics
