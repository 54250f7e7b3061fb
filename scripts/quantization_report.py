"""Score change of int8 / fp16 serving tables on a trained model: AUC and logloss on the test
split, float vs quantized bundle, and the per-row probability change.

    .venv/bin/python scripts/quantization_report.py --run runs/deepfm_try \\
        --config configs/deepfm_ml100k.toml --out runs/loadtest/quantization.json

Takes the run's latest checkpoint (the trainer's sharded DCP checkpoint, restored and
unsharded with the trainer's own helpers), writes a float, an int8 and an fp16 bundle of the
model with `serving.bundle.write_bundle`, loads each as the server would and scores the
whole test split through `serving.predictor.Predictor`. A tool, not part of serving: it
imports `trainer`, which serving must not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a `python -m trainer train` output directory")
    ap.add_argument("--config", required=True, help="the config that run was trained with")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from trainer import checkpoint
    from trainer.data.batches import iterate_batches
    from trainer.distributed import init_distributed
    from trainer.jobs.train import load_experiment, prepare
    from trainer.metrics import summary
    from trainer.models.build import build_model
    from trainer.training import wrap
    from trainer.unshard import unshard_into

    from serving.batch import FeatureBatch
    from serving.bundle import load_bundle, write_bundle
    from serving.predictor import Predictor

    exp = load_experiment(args.config, [])
    env = init_distributed()
    ds = prepare(exp, env, print)
    sharded = exp.train.storage == "sharded"
    train, _ = wrap(build_model(ds.spec, exp.model, device=torch.device("meta") if sharded else None), exp.train, env, print)
    ckpt = checkpoint.latest(Path(args.run) / "checkpoints")
    checkpoint.load(ckpt, train, None, env.rank)
    model = unshard_into(train, build_model(ds.spec, exp.model)).eval()

    batches = list(iterate_batches(ds, "test", 4096, shuffle=False, seed=0, epoch=0))
    labels = np.concatenate([b.labels.numpy() for b in batches]).astype(np.float32)
    feature_batches = [FeatureBatch.from_inputs(ds.spec, b.dense_features, b.sparse_features) for b in batches]
    first = batches[0]
    report = {"run": args.run, "checkpoint": str(ckpt), "test_rows": int(len(labels)), "model": exp.model.name}
    probs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("none", "int8", "fp16"):
            path = write_bundle(Path(tmp) / kind, spec=ds.spec, cluster_models=[model], router=None,
                                example=(first.dense_features[:64], _head(first.sparse_features, 64)), version=f"q-{kind}", quantize=kind)
            bundle = load_bundle(path)
            predictor = Predictor(bundle)
            start = time.perf_counter()
            p = np.concatenate([predictor.predict(fb).probabilities for fb in feature_batches])
            seconds = time.perf_counter() - start
            probs[kind] = p
            entry = {k: float(v) for k, v in summary(p, labels).items()}
            entry["bundle_bytes"] = sum(f.bytes for f in bundle.manifest.files.values())
            entry["score_seconds_test_split"] = round(seconds, 3)
            report[kind] = entry
    for kind in ("int8", "fp16"):
        change = np.abs(probs[kind].astype(np.float64) - probs["none"])
        report[kind]["auc_change"] = report[kind]["auc"] - report["none"]["auc"]
        report[kind]["max_abs_prob_change"] = float(change.max())
        report[kind]["mean_abs_prob_change"] = float(change.mean())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


def _head(kjt, n: int):
    """The first n rows of a KJT (keys, lengths and values of those rows only)."""
    from torchrec import KeyedJaggedTensor

    b = kjt.stride()
    lengths = kjt.lengths().view(len(kjt.keys()), b)[:, :n]
    offsets = kjt.offsets()
    values = torch.cat([kjt.values()[offsets[k * b]: offsets[k * b + n]] for k in range(len(kjt.keys()))])
    return KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=lengths.reshape(-1).to(torch.int32))


if __name__ == "__main__":
    sys.exit(main())
