"""Training-throughput benchmark: naive PyTorch vs embstack vs the dense-only ceiling.

    python -m trainer.bench --out runs/bench.json          # 26 fields, ~12M table rows
    python -m trainer.bench --small --out runs/bench.json  # ~1M table rows, quick look

DeepFM (dim 16, MLP 400-400-400, 13 dense inputs, batch 2048) on synthetic Criteo-shaped
batches (Zipf ids). Variants, each in its own process so its peak RSS is its own:
  naive   one nn.EmbeddingBag per field, torch.optim.Adam on every parameter
  stack   embstack: TorchRec EBC under DistributedModelParallel, FBGEMM fused row-wise
          Adagrad on the tables, Adam on the rest; first-order weights in their own tables
  stack_col  the same with `model.first_order_column`: each first-order weight is an extra
          column of its field's embedding table, so one lookup per id instead of two
  dense   the same network fed fixed embeddings, no tables (the compute ceiling; its
          backward still computes the gradient w.r.t. those embeddings)
Repeats are interleaved (naive, stack, dense, naive, ...) and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from serving.features import FeatureSpec, Field
from trainer.models.build import build_model
from trainer.models.ctr import ModelConfig

VARIANTS = ("naive", "stack", "stack_col", "dense")
DIM = 16
N_DENSE = 13


def vocab_sizes(small: bool, seed: int = 0) -> list[int]:
    """26 log-uniform vocab sizes whose total is close to the target table rows."""
    hi, target = (100_000, 1_000_000) if small else (2_000_000, 12_000_000)
    rng = np.random.default_rng(seed)
    while True:
        sizes = np.exp(rng.uniform(np.log(10), np.log(hi), 26)).astype(int)
        if abs(sizes.sum() - target) <= 0.1 * target:
            return sizes.tolist()


def make_batches(sizes: list[int], batch: int, n: int, seed: int = 0) -> list[Batch]:
    rng = np.random.default_rng(seed)
    keys = [f"C{i + 1}" for i in range(len(sizes))]
    out = []
    for _ in range(n):
        ids = np.stack([(rng.zipf(1.2, batch) - 1) % v for v in sizes])  # field-major
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.from_numpy(ids.reshape(-1)).long(), lengths=torch.ones(ids.size, dtype=torch.int32)
        )
        dense = torch.from_numpy(rng.exponential(1.0, (batch, N_DENSE)).astype(np.float32))
        labels = torch.from_numpy((rng.random(batch) < 0.25).astype(np.float32))
        out.append(Batch(dense_features=dense, sparse_features=kjt, labels=labels))
    return out


def spec_for(sizes: list[int]) -> FeatureSpec:
    return FeatureSpec("bench", "label", tuple(Field(f"C{i + 1}", "categorical", (), num_ids=v) for i, v in enumerate(sizes)))


MODEL = ModelConfig(name="deepfm", embedding_dim=DIM, mlp=[400, 400, 400], dense_input=True)


class NaiveDeepFM(nn.Module):
    """DeepFM the straightforward way: nn.EmbeddingBag per field (dense gradients)."""

    def __init__(self, sizes: list[int], head: nn.Module):
        super().__init__()
        self.emb = nn.ModuleList(nn.EmbeddingBag(v, DIM, mode="sum") for v in sizes)
        self.lin = nn.ModuleList(nn.EmbeddingBag(v, 1, mode="sum") for v in sizes)
        for e in self.emb:
            nn.init.uniform_(e.weight, -0.01, 0.01)
        for e in self.lin:
            nn.init.zeros_(e.weight)
        self.head = head

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = batch.sparse_features.values().view(len(self.emb), -1)
        embs = [e(ids[i].unsqueeze(1)) for i, e in enumerate(self.emb)]
        linear = sum(e(ids[i].unsqueeze(1)).squeeze(1) for i, e in enumerate(self.lin))
        return self.head.head(batch.dense_features, embs) + self.head.bias + linear


def run_variant(variant: str, sizes: list[int], steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    batches = make_batches(sizes, batch, 16)
    spec = spec_for(sizes)
    head = build_model(spec, MODEL, device=torch.device("meta"))  # tables on meta: only the head is real
    if variant == "naive":
        model = NaiveDeepFM(sizes, head)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(b):
            loss = nn.functional.binary_cross_entropy_with_logits(model(b), b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

    elif variant.startswith("stack"):
        from trainer.distributed import init_distributed
        from trainer.training import TrainConfig, wrap

        env = init_distributed()
        cfg = replace(MODEL, first_order_column=variant == "stack_col")
        train, opt = wrap(build_model(spec, cfg, device=torch.device("meta")), TrainConfig(), env, log=lambda _: None)

        def step(b):
            loss, _ = train(b)
            opt.zero_grad()
            loss.backward()
            opt.step()

    else:
        params = [p for p in head.parameters() if not p.is_meta]
        opt = torch.optim.Adam(params, lr=1e-3)
        # Gradients still flow into the (fixed) embeddings: the ceiling runs the same backward
        # pass as training, only without table lookups and table updates.
        fixed = [(torch.randn(batch, DIM) * 0.01).requires_grad_() for _ in sizes]

        def step(b):
            logit = head.head(b.dense_features, fixed) + head.bias
            loss = nn.functional.binary_cross_entropy_with_logits(logit, b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

    for i in range(3):  # warm-up: allocator, optimizer state, first-call overheads
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    elapsed = time.perf_counter() - start
    return {
        "variant": variant,
        "samples_per_s": steps * batch / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python -m trainer.bench --out runs/bench.json\n  python -m trainer.bench --small --repeats 5 --steps 40")
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--small", action="store_true", help="~1M table rows instead of ~12M")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (naive gets a quarter: it is slow)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args(argv)
    sizes = vocab_sizes(args.small)
    if args.variant:
        steps = max(2, args.steps // 4) if args.variant == "naive" else args.steps
        print(json.dumps(run_variant(args.variant, sizes, steps, args.batch)))
        return 0
    print(f"DeepFM dim {DIM}, MLP 400-400-400, batch {args.batch}; 26 tables, {sum(sizes):,} rows; "
          f"{torch.get_num_threads()} threads; repeats {args.repeats}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for v in VARIANTS:
            cmd = [sys.executable, "-m", "trainer.bench", "--out", args.out, "--variant", v,
                   "--steps", str(args.steps), "--batch", str(args.batch)] + (["--small"] if args.small else [])
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            runs[v].append(res)
            print(f"  repeat {r} {v:9s} {res['samples_per_s']:>10,.0f} samples/s  peak RSS {res['peak_rss_mb']:,.0f} MB", flush=True)
    med = {v: float(np.median([x["samples_per_s"] for x in runs[v]])) for v in VARIANTS}
    rss = {v: float(np.median([x["peak_rss_mb"] for x in runs[v]])) for v in VARIANTS}
    result = {
        "table_rows": sum(sizes), "vocab_sizes": sizes, "batch": args.batch, "threads": torch.get_num_threads(),
        "samples_per_s": med, "peak_rss_mb": rss,
        **{f"{v}_over_{base}": med[v] / med[base] for v in ("stack", "stack_col") for base in ("naive", "dense")},
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("median samples/s: " + " | ".join(f"{v} {med[v]:,.0f}" for v in VARIANTS))
    for v in ("stack", "stack_col"):
        print(f"{v}/naive {result[f'{v}_over_naive']:.1f}x   {v}/dense {result[f'{v}_over_dense']:.2f}x")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
