"""Export stage: the method's retrained models (+ router) → one verified bundle.

A method without clusters exports one cluster, so serving has one code path. After
writing, the bundle is loaded back and test rows are scored through serving's Predictor
(the server's own path) and compared with the offline models; the bundle's served bytes
are read from its files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from trainer.data.batches import iterate_batches
from trainer.jobs.report import served_programs
from trainer.jobs.retrain import Trained
from trainer.training import Log

VERIFY_ROWS = 2000


def export_bundle(ds, trained: Trained, row: dict, router, seed: int, where: Path, log: Log) -> dict:
    """Write the bundle directory `where` from `trained` and check it; returns the check figures.
    Shared-table models, and cluster models whose router fuses them, export as one routed
    program (trainer.jobs.report.served_programs).

    Raises RuntimeError if a served probability differs from the offline one by more than
    1e-6 (batch-shape rounding is ~1e-7).
    """
    from serving.batch import FeatureBatch
    from serving.bundle import load_bundle, served_bytes, write_bundle
    from serving.predictor import Predictor

    decisions = trained.decisions
    served, routed = served_programs(trained, router)
    offline_router = router if len(trained.models) > 1 else None
    one_program = len(served) == 1 and (decisions.shared_tables or offline_router is not None)  # routes and scores
    first = next(iterate_batches(ds, "test", 64, shuffle=False, seed=0, epoch=0))
    version = f"{decisions.method}-{ds.spec.dataset}-s{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    start = time.perf_counter()
    if decisions.shared_tables:
        dims = [c.dims for c in decisions.clusters]
    else:
        dims = [{n: 0 for n in ds.spec.names} | dict(zip(m.embeddings.layout.fields, m.embeddings.layout.dims))
                for m in (trained.models if one_program else served)]
    programs = ({"cluster_models": [], "router": None, "routed": served[0]} if one_program
                else {"cluster_models": served, "router": routed}) | {"dims": dims}
    path = write_bundle(
        where, spec=ds.spec, example=(first.dense_features, first.sparse_features), version=version,
        metadata={"method": decisions.method, "decisions": decisions.to_json()},
        metrics={k: row[k] for k in ("test_auc", "test_logloss", "embedding_params", "served_bytes")},
        overwrite=True, quantize=decisions.quantize, **programs,
    )
    bundle = load_bundle(path, dataset=ds.spec.dataset)
    predictor = Predictor(bundle)
    diff, rows = 0.0, 0
    with torch.no_grad():
        for b in iterate_batches(ds, "test", 500, shuffle=False, seed=0, epoch=0):
            c = offline_router(b.dense_features, b.sparse_features) if offline_router is not None \
                else torch.zeros(len(b.labels), dtype=torch.long)
            logits = torch.stack([m(b.dense_features, b.sparse_features) for m in trained.models], 1)
            offline = torch.sigmoid(logits.gather(1, c[:, None]).squeeze(1)).numpy()
            got = predictor.predict(FeatureBatch.from_inputs(ds.spec, b.dense_features, b.sparse_features)).probabilities
            diff = max(diff, float(np.abs(got - offline).max()))
            rows += len(got)
            if rows >= VERIFY_ROWS:
                break
    size = served_bytes(path)
    check = {"path": str(path), "version": version, "rows_compared": rows, "max_abs_diff_served_vs_offline": diff,
             "served_bytes": size["total"], "served_bytes_detail": {k: v for k, v in size.items() if k != "tensors"},
             "seconds": time.perf_counter() - start}
    log(f"bundle {path}: {rows} test rows, max |served - offline| probability {diff:.2e}; served bytes {size['total']:,} "
        f"(report: {row['served_bytes']:,})")
    if diff > 1e-6 and decisions.quantize == "none":
        raise RuntimeError(f"bundle {path} scores differ from the offline models by {diff:.2e} (> 1e-6)")
    return check
