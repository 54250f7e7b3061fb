"""Writing a bundle: torch.export of the models, optional table quantization, atomic publish.

Why torch.export (.pt2): the graph is self-describing (serving needs no model code, and
must not import `trainer`), it traces torchrec's EmbeddingBagCollection with a
KeyedJaggedTensor input in non-strict mode, and with a dynamic batch dimension and a
dynamic number of ids one program serves any batch size and any bag lengths. Rejected:
TorchScript (deprecated, and `torch.jit.script` fails on the trainer's DeepFM — its
TableLayout attribute — and on any forward without type annotations for the KJT);
JSON architecture + .npy weights (serving would have to know every model class); plain
`torch.save` pickles (loading runs arbitrary code).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

from serving.batch import FeatureBatch
from serving.bundle.manifest import (
    GOLDEN_FILES,
    MANIFEST,
    QUANTIZATION_KINDS,
    QUANTIZATIONS,
    ROUTED_FILE,
    ROUTER_FILE,
    SCHEMA_VERSION,
    SPEC_FILE,
    BundleError,
    ClusterEntry,
    FileEntry,
    Manifest,
    cluster_file,
)
from serving.bundle.verify import RoutedOutput, SingleCluster, check_ids, check_table, first_line, load_bundle
from serving.contract import DERIVED_SEP
from serving.features import FeatureSpec

GOLDEN_ROWS = 64


class _QuietKJTExport(logging.Filter):
    """Drops torchrec's per-call warning that exporting a KJT's to_dict is slow: export runs
    once per bundle, and the programs it traces are what the server runs, so it says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "non-strict torch.export KJT to_dict" not in record.getMessage()


logging.getLogger().addFilter(_QuietKJTExport())


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    spec: FeatureSpec,
    cluster_models: list[nn.Module],
    router: nn.Module | None,
    example: tuple[torch.Tensor, KeyedJaggedTensor],
    version: str,
    metadata: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    dims: list[dict[str, int]] | None = None,
    overwrite: bool = False,
    quantize: str = "none",
    routed: nn.Module | None = None,
) -> Path:
    """Exports models into a new bundle directory, verified, then renamed into place.

    The bundle is written to a temporary sibling directory, loaded back with
    `load_bundle` (hashes + golden outputs), and only then renamed to `out_dir`, so a
    reader never sees a half-written bundle. Models are put in eval mode.

    Args:
        out_dir: the bundle directory to create.
        spec: the feature spec the models were trained on.
        cluster_models: one model per cluster; (dense, sparse) → logits [B].
        router: (dense, sparse) → LongTensor[B] cluster ids; None when there is one cluster.
        example: (dense, sparse) model inputs in the `serving.batch` layout, at least 2
            rows; they trace the programs, and up to 64 rows become the golden rows.
        version: bundle version string (what every response reports).
        metadata: free-form JSON-serialisable information (method, config, ...).
        metrics: offline metrics (JSON-serialisable).
        dims: embedding dim per field per cluster; default: each table's stored width.
        overwrite: replace an existing `out_dir` (old one removed after the swap).
        quantize: "none", or a key of QUANTIZATIONS: store the cluster models' embedding
            tables quantized (copies; the given models are untouched). The router stays
            float32, so rows route exactly as with float tables. The golden outputs are
            the quantized models', and metrics["quantization"] records how far their
            probabilities moved from the float models' on the example rows.
        routed: instead of `router` and `cluster_models` (pass None and []): one module
            (dense, sparse) → (logits [B, K], cluster ids [B]) whose router and K cluster
            heads read one set of tables; `dims` (K entries) is then required. Exported as
            one program, so the tables are stored once.

    Returns the bundle directory. Raises BundleError on bad arguments or a failed export.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: already exists; bundles are immutable, write a new directory (or overwrite=True)")
    if not isinstance(version, str) or not version:
        raise BundleError("version must be a non-empty string")
    if routed is not None:
        if cluster_models or router is not None or dims is None or quantize != "none":
            raise BundleError("a routed program comes alone (no router, no cluster models), with dims per cluster and "
                              "float tables")
        cluster_models = [RoutedOutput(routed, k) for k in range(len(dims))]
        router = RoutedOutput(routed, None)
    if not cluster_models:
        raise BundleError("need at least one cluster model")
    if router is None and len(cluster_models) != 1:
        raise BundleError(f"{len(cluster_models)} cluster models need a router")
    if dims is not None and len(dims) != len(cluster_models):
        raise BundleError(f"dims has {len(dims)} entries for {len(cluster_models)} cluster models")
    if quantize not in QUANTIZATION_KINDS:
        raise BundleError(f"quantize {quantize!r} is not one of {list(QUANTIZATION_KINDS)}")
    metadata, metrics = metadata or {}, metrics or {}
    for name, obj in (("metadata", metadata), ("metrics", metrics)):
        try:
            json.dumps(obj, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{name} is not JSON-serialisable: {e}") from None
    try:
        batch = FeatureBatch.from_inputs(spec, *example)
    except ValueError as e:
        raise BundleError(f"example inputs do not match the spec: {e}") from None
    if batch.num_rows < 2:
        raise BundleError("the example needs at least 2 rows (a 1-row trace would fix the batch size)")
    check_ids(spec, batch, "example")
    golden = batch.take(np.arange(min(batch.num_rows, GOLDEN_ROWS)))
    example_inputs = batch.to_inputs(spec.names)  # canonical dtypes and no offsets: what serving feeds

    entries = []
    for k, model in enumerate(cluster_models):
        tables = _tables(model, spec, f"cluster model {k}")
        file = ROUTED_FILE if routed is not None else cluster_file(k)
        entries.append(ClusterEntry(file, _dims(spec, dims[k], k) if dims is not None else _stored_dims(spec, tables), tables))
    if router is not None:
        _tables(router, spec, "router")
    if quantize != "none":
        cluster_models, report = _quantized(cluster_models, quantize, example_inputs)
        metrics = {**metrics, "quantization": report}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a server may run as another user
        (tmp / "golden").mkdir()
        spec.save(str(tmp / SPEC_FILE))
        programs = [(cluster_file(k), m) for k, m in enumerate(cluster_models)]
        if routed is not None:
            programs = [(ROUTED_FILE, routed)]
        elif router is not None:
            programs.append((ROUTER_FILE, router))
        with torch.no_grad():
            g_inputs = golden.to_inputs(spec.names)
            for _, m in programs:
                m.eval()
            logits = np.stack([_logits(m(*g_inputs), golden.num_rows, f"cluster model {k}") for k, m in enumerate(cluster_models)])
            ids = (router if router is not None else SingleCluster())(*g_inputs)
            clusters = _cluster_ids(ids, golden.num_rows, len(cluster_models), "router")
            for name, m in programs:
                _export(m, example_inputs, len(spec.names), tmp / name)
        dense, sparse = g_inputs
        arrays = {"dense": dense.numpy(), "values": sparse.values().numpy(), "lengths": sparse.lengths().numpy(),
                  "logits": logits, "clusters": clusters}
        for role, arr in arrays.items():
            np.save(tmp / GOLDEN_FILES[role], arr, allow_pickle=False)
        files = {p.relative_to(tmp).as_posix(): FileEntry.of(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            bundle_version=version,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            dataset=spec.dataset,
            feature_spec=SPEC_FILE,
            router=ROUTER_FILE if router is not None and routed is None else None,
            clusters=entries,
            golden=dict(GOLDEN_FILES),
            files=files,
            metrics=metrics,
            metadata=metadata,
            producer=_producer(),
            quantization=quantize,
            routed=ROUTED_FILE if routed is not None else None,
        )
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest.to_dict(), fh, indent=1, sort_keys=True)
        for p in tmp.rglob("*"):
            if p.is_file():
                _fsync(p)
        load_bundle(tmp)  # refuse to publish what would not load
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _quantized(models: list[nn.Module], kind: str, inputs: tuple[torch.Tensor, KeyedJaggedTensor]) -> tuple[list[nn.Module], dict]:
    """Copies of `models` with quantized embedding tables, and how their probabilities moved."""
    import copy

    out, diffs = [], []
    with torch.no_grad():
        for model in models:
            model.eval()
            q = _quantize_tables(copy.deepcopy(model), kind).eval()
            _drop_table_views(q)
            diffs.append((torch.sigmoid(q(*inputs)) - torch.sigmoid(model(*inputs))).abs().double())
            out.append(q)
    every = torch.cat(diffs)
    report = {"dtype": kind, "rows": int(inputs[0].shape[0]), "max_abs_prob_change": float(every.max()),
              "mean_abs_prob_change": float(every.mean())}
    return out, report


# bytes of one row of `dim` values as FBGEMM stores it quantized: padded to 16 bytes, int8 /
# int4 rows with an fp16 scale and bias
_ROW_BYTES = {"fp16": lambda dim: 2 * dim, "int8": lambda dim: dim + 4, "int4": lambda dim: -(-dim // 2) + 4}


def _shrinks(ebc: EmbeddingBagCollection, kind: str) -> bool:
    """Whether quantizing the tables stores fewer bytes than their float32 rows: not for
    tables 4 or fewer values wide (a first-order weight per id is stored 4 wide, 16 bytes a
    row, and so is any quantized row of it, plus FBGEMM's per-table alignment)."""
    tables = ebc.embedding_bag_configs()
    quantized = sum(t.num_embeddings * -(-_ROW_BYTES[kind](t.embedding_dim) // 16) * 16 for t in tables)
    return quantized < sum(t.num_embeddings * 4 * t.embedding_dim for t in tables)


def _quantize_tables(model: nn.Module, kind: str) -> nn.Module:
    """torchrec's quantized tables (what `torchrec.inference.modules.quantize_embeddings`
    builds) for the model's table collections that shrink; the others stay float32."""
    from torch.ao.quantization import PlaceholderObserver, quantize_dynamic
    from torchrec.modules.embedding_configs import QuantConfig

    qconfig = QuantConfig(activation=PlaceholderObserver.with_args(dtype=torch.float),
                          weight=PlaceholderObserver.with_args(dtype=QUANTIZATIONS[kind]))
    names = {n: qconfig for n, m in model.named_modules() if isinstance(m, EmbeddingBagCollection) and _shrinks(m, kind)}
    return quantize_dynamic(model, qconfig_spec=names, mapping={EmbeddingBagCollection: QuantEmbeddingBagCollection},
                            inplace=True)


def _drop_table_views(model: nn.Module) -> None:
    """Remove each quantized table's state buffer, so the bundle stores the rows once.

    A quantized EBC exposes each table as a buffer viewing FBGEMM's one packed buffer of all
    its tables, but its forward reads the packed buffer itself, which torch.export lifts out
    of the module as a constant. Exported as they are, the views would be stored as state
    beside that constant: every row twice in the .pt2 and in the loaded program. No graph
    node reads the views, so dropping them changes no score; the manifest's table list
    comes from the float model, and `served_bytes` counts the lifted constant."""
    for module in model.modules():
        if isinstance(module, QuantEmbeddingBagCollection):
            for table in module.embedding_bags.values():
                table._buffers.pop("weight", None)


def _tables(model: nn.Module, spec: FeatureSpec, what: str) -> list[dict[str, Any]]:
    """The model's embedding tables, as the manifest lists them; refuses a table that does
    not cover its field's ids (`check_table`, which loading repeats on the manifest)."""
    if not isinstance(model, nn.Module):
        raise BundleError(f"{what} is a {type(model).__name__}, not an nn.Module")
    tables = []
    for module in model.modules():
        if not isinstance(module, EmbeddingBagCollection):
            continue
        for cfg in module.embedding_bag_configs():
            for feature in cfg.feature_names:
                # "<field>:<tag>" = a feature the model derives from the field's ids itself (e.g. a
                # DPQ field's centroid ids, read from its codes buffer): serving never feeds it.
                name, derived = feature.split(DERIVED_SEP, 1)[0], DERIVED_SEP in feature
                entry = {"name": cfg.name, "feature": name, "num_embeddings": cfg.num_embeddings, "dim": cfg.embedding_dim}
                entry |= {"derived": feature} if derived else {}
                check_table(spec, entry, what)
                tables.append(entry)
    return tables


def _dims(spec: FeatureSpec, given: dict[str, int], k: int) -> dict[str, int]:
    unknown = sorted(set(given) - set(spec.names))
    if unknown:
        raise BundleError(f"dims of cluster {k} name unknown fields {unknown}")
    return {name: int(given.get(name, 0)) for name in spec.names}


def _stored_dims(spec: FeatureSpec, tables: list[dict[str, Any]]) -> dict[str, int]:
    dims = {name: 0 for name in spec.names}
    for t in tables:  # first table of a field = its embedding (later ones: e.g. FM linear weights)
        if dims[t["feature"]] == 0:
            dims[t["feature"]] = int(t["dim"])
    return dims


def _logits(out: Any, n: int, what: str) -> np.ndarray:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,) or not out.is_floating_point():
        raise BundleError(f"{what} must return float logits of shape [{n}], got {getattr(out, 'shape', type(out).__name__)}")
    return out.detach().float().numpy()


def _cluster_ids(out: Any, n: int, k: int, what: str) -> np.ndarray:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,) or out.is_floating_point():
        raise BundleError(f"{what} must return integer cluster ids of shape [{n}], got {getattr(out, 'shape', type(out).__name__)}")
    ids = out.detach().long().numpy()
    if len(ids) and (ids.min() < 0 or ids.max() >= k):
        raise BundleError(f"{what} returned cluster ids outside [0, {k})")
    return ids


def _export(model: nn.Module, inputs: tuple[torch.Tensor, KeyedJaggedTensor], n_keys: int, path: Path) -> None:
    """Non-strict torch.export with a dynamic batch (dense rows, KJT lengths = n_keys·B)
    and a dynamic number of ids, saved without pickled example inputs."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    nnz = Dim("nnz", min=0)
    # The KJT pytree children, in KeyedJaggedTensor._fields order: values, weights,
    # lengths, offsets, stride_per_key_per_rank, inverse_indices. Only two are tensors.
    kjt_shapes = [{0: nnz} if f == "_values" else {0: n_keys * batch} if f == "_lengths" else None for f in KeyedJaggedTensor._fields]
    try:
        ep = torch.export.export(model, inputs, dynamic_shapes=({0: batch}, kjt_shapes), strict=False)
    except Exception as e:  # export raises many types; the exporter needs the file and the cause
        raise BundleError(f"{path.name}: torch.export failed: {type(e).__name__}: {first_line(e)}") from e
    ep.example_inputs = None  # would be a pickle of a KJT: loading it needs weights_only=False
    torch.export.save(ep, str(path))


def _producer() -> dict[str, str]:
    import torchrec

    return {"torch": torch.__version__, "torchrec": getattr(torchrec, "__version__", "unknown")}


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.rename(tmp, out)  # atomic on one filesystem; fails if someone raced us to `out`
    elif overwrite:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        raise BundleError(f"{out}: appeared while the bundle was being written")
    dir_fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
