"""A straightforward DeepFM in plain PyTorch, the yardstick for the stack's DeepFM.

    python -m trainer.baselines.plain_deepfm [--config configs/deepfm_ml100k.toml] [--seeds 0 1 2] [--out FILE.json]

Same cached data, split and vocabularies as the stack (trainer.data), but nothing else of
ours: one nn.Embedding per field (nn.EmbeddingBag with mean pooling for bag fields), a
first-order weight per id, the FM pairwise term, an MLP, torch.optim.Adam on every
parameter, small N(0, 1e-4) embedding init, early stopping on validation AUC. Model sizes,
batch size, learning rate, epochs and patience come from the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.config import load_sections
from trainer.data.config import DataConfig, load_dataset
from trainer.jobs.seeds import stats
from trainer.metrics import summary
from trainer.models.ctr import ModelConfig
from trainer.training import TrainConfig


class PlainDeepFM(nn.Module):
    def __init__(self, sizes: dict[str, int], bag_fields: set[str], dim: int, hidden: list[int]):
        super().__init__()
        self.names = list(sizes)
        self.bag_fields = bag_fields
        self.emb = nn.ModuleDict({n: nn.EmbeddingBag(v, dim, mode="mean") if n in bag_fields else nn.Embedding(v, dim)
                                  for n, v in sizes.items()})
        self.lin = nn.ModuleDict({n: nn.EmbeddingBag(v, 1, mode="mean") if n in bag_fields else nn.Embedding(v, 1)
                                  for n, v in sizes.items()})
        for m in [*self.emb.values(), *self.lin.values()]:
            nn.init.normal_(m.weight, std=1e-4)
        layers, width = [], dim * len(sizes)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.bias = nn.Parameter(torch.zeros(1))

    def _look(self, table: nn.ModuleDict, inputs: dict) -> list[torch.Tensor]:
        return [table[n](*inputs[n]) if n in self.bag_fields else table[n](inputs[n]) for n in self.names]

    def forward(self, inputs: dict) -> torch.Tensor:
        e = torch.stack(self._look(self.emb, inputs), dim=1)  # [B, N, d]
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        linear = torch.cat(self._look(self.lin, inputs), dim=1).sum(1)
        return self.bias + linear + fm + self.mlp(e.flatten(1)).squeeze(1)


def batch_inputs(ds, rows: np.ndarray) -> dict:
    out = {}
    for f in ds.spec.fields:
        if f.name in ds.bags:
            offsets, values = ds.bags[f.name]
            starts, ends = offsets[rows], offsets[rows + 1]
            flat = np.concatenate([values[s:e] for s, e in zip(starts, ends)])
            out[f.name] = (torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(np.r_[0, np.cumsum(ends - starts)[:-1]]))
        else:
            out[f.name] = torch.from_numpy(np.asarray(ds.ids[f.name][rows], dtype=np.int64))
    return out


@torch.no_grad()
def score(model: PlainDeepFM, ds, split: str, batch: int) -> dict:
    rows = ds.indices(split)
    probs = np.concatenate([torch.sigmoid(model(batch_inputs(ds, rows[i:i + batch]))).numpy() for i in range(0, len(rows), batch)])
    return summary(probs, ds.labels[rows].astype(np.float32))


def train_one(ds, mcfg: ModelConfig, tcfg: TrainConfig, seed: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = {f.name: f.num_embeddings for f in ds.spec.fields}
    model = PlainDeepFM(sizes, set(ds.bags), mcfg.embedding_dim, mcfg.mlp)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    train_rows = ds.indices("train")
    best, best_state, best_epoch, history = -1.0, None, -1, []
    for epoch in range(tcfg.epochs):
        model.train()
        order = rng.permutation(train_rows)
        for start in range(0, len(order), tcfg.batch_size):
            rows = order[start:start + tcfg.batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch_inputs(ds, rows)), torch.from_numpy(ds.labels[rows].astype(np.float32)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        val = score(model, ds, "val", tcfg.eval_batch_size)
        history.append(val)
        print(f"seed {seed} epoch {epoch} val auc {val['auc']:.4f} logloss {val['logloss']:.4f}", flush=True)
        if val["auc"] > best:
            best, best_epoch = val["auc"], epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= tcfg.patience:
            break
    model.load_state_dict(best_state)
    test = score(model, ds, "test", tcfg.eval_batch_size)
    return {"seed": seed, "best_epoch": best_epoch, "val_auc": best, "test_auc": test["auc"], "test_logloss": test["logloss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.baselines.plain_deepfm", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/deepfm_ml100k.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    sections = load_sections(args.config, {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}, args.overrides)
    torch.set_num_threads(sections["train"].threads or torch.get_num_threads())
    ds = load_dataset(sections["data"], log=print)
    runs = [train_one(ds, sections["model"], sections["train"], s) for s in args.seeds]
    auc = stats([r["test_auc"] for r in runs])
    result = {"runs": runs, "test_auc_mean": auc["mean"], "test_auc_std": auc["std"]}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
