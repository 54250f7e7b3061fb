"""The bundle: what an export job writes and the server loads. The one packaging module.

A bundle is a directory, immutable once written:

    manifest.json        schema version, bundle version, dataset, files (sha256 + size), clusters
    feature_spec.json    FeatureSpec (fields, vocabularies): how raw values become ids
    router.pt2           torch.export program: (dense, sparse) → LongTensor[B] cluster ids
                         (absent for a method without clusters: one cluster scores every row)
    cluster_<k>.pt2      torch.export program per cluster: (dense, sparse) → logits [B]
    golden/*.npy         up to 64 example rows and the exporter's in-memory outputs on them

Why torch.export (.pt2): the graph is self-describing (serving needs no model code, and
must not import `trainer`), it traces torchrec's EmbeddingBagCollection with a
KeyedJaggedTensor input in non-strict mode, and with a dynamic batch dimension and a
dynamic number of ids one program serves any batch size and any bag lengths. Rejected:
TorchScript (deprecated, and `torch.jit.script` fails on the trainer's DeepFM — its
TableLayout attribute — and on any forward without type annotations for the KJT);
JSON architecture + .npy weights (serving would have to know every model class); plain
`torch.save` pickles (loading runs arbitrary code).

Loading never runs code chosen by the bundle: every file's sha256 and size are checked
against the manifest first; each .pt2 is audited (`serving.pt2_audit`: no pickles, only
allowlisted operators, guard and shape expressions that cannot call out); and loads run
with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (torch's own switch, which overrides the
`torch.load(weights_only=False)` fallback inside `torch.export.load`). The exporter
stores no pickled example inputs, so none of this refuses a genuine bundle. After
loading, each program is run on the golden rows and must reproduce the exporter's
in-memory outputs — which is also the warm-up a hot reload needs before it swaps
bundles in.

A hot reload may hand `load_bundle` the programs it already runs, keyed by sha256: a
file whose verified digest matches is not deserialised again (torch.export loading costs
~1 s per program). Identical bytes are the identical program, and the reused programs
still have to reproduce the new bundle's golden outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from serving.batch import FeatureBatch
from serving.features import FeatureSpec, FeatureSpecError
from serving.pt2_audit import UnsafeProgram, audit_pt2

SCHEMA_VERSION = 1
FORMAT = "embstack-bundle"
MANIFEST = "manifest.json"
SPEC_FILE = "feature_spec.json"
ROUTER_FILE = "router.pt2"
GOLDEN_ROWS = 64
DERIVED_SEP = ":"  # a table feature "<field>:<tag>" is derived by the model from <field> (see _tables)
GOLDEN_FILES = {
    "dense": "golden/dense.npy",  # float32 [G, n_numerical]
    "values": "golden/values.npy",  # int64, the KJT values
    "lengths": "golden/lengths.npy",  # int32 [n_fields * G], the KJT lengths
    "logits": "golden/logits.npy",  # float32 [K, G], every cluster model on every golden row
    "clusters": "golden/clusters.npy",  # int64 [G], the router's choice
}
# Loaded programs must match the exporter's outputs this closely (float32 logits; the same
# kernels run on both sides, so real differences are ~1e-7).
GOLDEN_ATOL = 1e-5
_CHUNK = 1 << 20
# Serving-time storage of the cluster models' embedding tables (torchrec's quantized
# EmbeddingBagCollection over FBGEMM's TBE kernels; row-wise scale and bias for int8).
QUANTIZATIONS = {"int8": torch.qint8, "fp16": torch.half}


def cluster_file(k: int) -> str:
    return f"cluster_{k}.pt2"


class BundleError(Exception):
    """A bundle cannot be written or loaded; the message names the file at fault."""


@dataclass(frozen=True)
class FileEntry:
    """Integrity record of one bundle file.

    Args:
        sha256: hex digest of the file's bytes.
        bytes: file size.
    """

    sha256: str
    bytes: int


@dataclass(frozen=True)
class ClusterEntry:
    """One cluster model.

    Args:
        model: file of its exported program.
        dims: embedding dim per spec field (0 = field dropped) — from the exporter, or
            the stored table width when it gave none.
        tables: its embedding tables: name, feature, num_embeddings, dim (stored width).
    """

    model: str
    dims: dict[str, int]
    tables: list[dict[str, Any]]


@dataclass(frozen=True)
class Manifest:
    """manifest.json: everything needed to check and describe a bundle.

    Args:
        schema_version: layout of this manifest and bundle; loaders refuse others.
        bundle_version: the exporter's version string; every response carries it.
        created: ISO 8601 UTC creation time.
        dataset: dataset id; a loader expecting another dataset refuses the bundle.
        feature_spec: file of the FeatureSpec.
        router: file of the router program; None = one cluster, no routing.
        clusters: one entry per cluster model, index = cluster id.
        golden: role → file of the golden rows and outputs (see GOLDEN_FILES).
        files: every file of the bundle except this manifest, with its sha256 and size.
        metrics: offline metrics of the exported models (AUC, logloss, ...).
        metadata: free-form JSON from the exporter (method, config, decisions, ...).
        producer: library versions that exported the programs.
        format: always FORMAT, so a stray manifest.json is not mistaken for a bundle.
        quantization: storage of the cluster models' embedding tables: "none" (float32)
            or a key of QUANTIZATIONS (the router always stays float32).
    """

    schema_version: int
    bundle_version: str
    created: str
    dataset: str
    feature_spec: str
    router: str | None
    clusters: list[ClusterEntry]
    golden: dict[str, str]
    files: dict[str, FileEntry]
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    quantization: str = "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Manifest":
        """Parses and checks a manifest; one BundleError lists every problem found."""
        if not isinstance(d, dict):
            raise BundleError(f"{where}: not a JSON object")
        if d.get("format") != FORMAT:
            raise BundleError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}; not an embstack bundle")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {d.get('schema_version')!r} is not supported (this server reads "
                f"{SCHEMA_VERSION}); re-export the bundle or run a matching server"
            )
        problems = []
        expect = {"bundle_version": str, "created": str, "dataset": str, "feature_spec": str, "clusters": list,
                  "golden": dict, "files": dict, "metrics": dict, "metadata": dict, "producer": dict}
        for key, typ in expect.items():
            if not isinstance(d.get(key), typ):
                problems.append(f"{key} must be a {typ.__name__}, got {type(d.get(key)).__name__}")
        if d.get("router") is not None and not isinstance(d.get("router"), str):
            problems.append("router must be a file name or null")
        if problems:
            raise BundleError(f"{where}: invalid manifest: " + "; ".join(problems))
        try:
            files = {name: FileEntry(str(e["sha256"]), int(e["bytes"])) for name, e in d["files"].items()}
            clusters = [ClusterEntry(str(c["model"]), {k: int(v) for k, v in c["dims"].items()}, list(c["tables"])) for c in d["clusters"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{where}: invalid manifest: malformed files or clusters entry ({e!r})") from None
        if not clusters:
            raise BundleError(f"{where}: invalid manifest: no cluster models")
        if d.get("router") is None and len(clusters) != 1:
            raise BundleError(f"{where}: invalid manifest: {len(clusters)} clusters but no router")
        if set(d["golden"]) != set(GOLDEN_FILES):
            raise BundleError(f"{where}: invalid manifest: golden must name {sorted(GOLDEN_FILES)}")
        quantization = d.get("quantization", "none")  # absent in bundles written before it existed
        if quantization != "none" and quantization not in QUANTIZATIONS:
            raise BundleError(f"{where}: invalid manifest: quantization {quantization!r} is not one of {['none', *QUANTIZATIONS]}")
        fields = {k: d[k] for k in expect if k not in ("files", "clusters")}
        return cls(SCHEMA_VERSION, clusters=clusters, files=files, router=d.get("router"), quantization=quantization, **fields)

    def referenced_files(self) -> dict[str, str]:
        """file → what it is, for every file the loader reads (all must be in `files`)."""
        refs = {self.feature_spec: "feature spec"}
        if self.router is not None:
            refs[self.router] = "router"
        refs.update({c.model: f"cluster {k} model" for k, c in enumerate(self.clusters)})
        refs.update({name: f"golden {role}" for role, name in self.golden.items()})
        return refs


class SingleCluster(nn.Module):
    """The router of a bundle without one: every row goes to cluster 0."""

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return torch.zeros(dense.shape[0], dtype=torch.long)


Program = Callable[[torch.Tensor, KeyedJaggedTensor], torch.Tensor]


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle, ready to run.

    Args:
        path: the bundle directory.
        manifest: its manifest.
        spec: its feature spec.
        router: (dense, sparse) → LongTensor[B] cluster ids (SingleCluster when the
            bundle has no router).
        models: one (dense, sparse) → logits [B] program per cluster.
    """

    path: Path
    manifest: Manifest
    spec: FeatureSpec
    router: Program
    models: tuple[Program, ...]

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    @property
    def num_clusters(self) -> int:
        return len(self.models)

    @property
    def dims(self) -> list[dict[str, int]]:
        return [c.dims for c in self.manifest.clusters]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.metrics

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.metadata

    def programs_by_sha256(self) -> dict[str, Program]:
        """sha256 of each program file → the loaded program (what `load_bundle` may reuse)."""
        files = self.manifest.files
        out = {files[c.model].sha256: model for c, model in zip(self.manifest.clusters, self.models)}
        if self.manifest.router is not None:
            out[files[self.manifest.router].sha256] = self.router
        return out


@dataclass(frozen=True)
class Golden:
    """The exporter's example rows and what its in-memory models said about them.

    Args:
        batch: the golden rows, encoded.
        logits: float32 [K, G], every cluster model on every golden row.
        clusters: int64 [G], the router's choice per row.
    """

    batch: FeatureBatch
    logits: np.ndarray
    clusters: np.ndarray


# --------------------------------------------------------------------------- writing
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

    Returns the bundle directory. Raises BundleError on bad arguments or a failed export.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: already exists; bundles are immutable, write a new directory (or overwrite=True)")
    if not isinstance(version, str) or not version:
        raise BundleError("version must be a non-empty string")
    if not cluster_models:
        raise BundleError("need at least one cluster model")
    if router is None and len(cluster_models) != 1:
        raise BundleError(f"{len(cluster_models)} cluster models need a router")
    if dims is not None and len(dims) != len(cluster_models):
        raise BundleError(f"dims has {len(dims)} entries for {len(cluster_models)} cluster models")
    if quantize != "none" and quantize not in QUANTIZATIONS:
        raise BundleError(f"quantize {quantize!r} is not one of {['none', *QUANTIZATIONS]}")
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
    _check_example_ids(spec, batch)
    golden = batch.take(np.arange(min(batch.num_rows, GOLDEN_ROWS)))
    example_inputs = batch.to_inputs(spec.names)  # canonical dtypes and no offsets: what serving feeds

    entries = []
    for k, model in enumerate(cluster_models):
        tables = _tables(model, spec, f"cluster model {k}")
        entries.append(ClusterEntry(cluster_file(k), _dims(spec, dims[k], k) if dims is not None else _stored_dims(spec, tables), tables))
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
        if router is not None:
            programs.append((ROUTER_FILE, router))
        with torch.no_grad():
            g_inputs = golden.to_inputs(spec.names)
            for _, m in programs:
                m.eval()
            logits = np.stack([_logits(m(*g_inputs), golden.num_rows, f"cluster model {k}") for k, m in enumerate(cluster_models)])
            clusters = _cluster_ids(router(*g_inputs) if router is not None else torch.zeros(golden.num_rows, dtype=torch.long),
                                    golden.num_rows, len(cluster_models), "router")
            for name, m in programs:
                _export(m, example_inputs, len(spec.names), tmp / name)
        dense, sparse = g_inputs
        arrays = {"dense": dense.numpy(), "values": sparse.values().numpy(), "lengths": sparse.lengths().numpy(),
                  "logits": logits, "clusters": clusters}
        for role, arr in arrays.items():
            np.save(tmp / GOLDEN_FILES[role], arr, allow_pickle=False)
        files = {p.relative_to(tmp).as_posix(): _file_entry(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            bundle_version=version,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            dataset=spec.dataset,
            feature_spec=SPEC_FILE,
            router=ROUTER_FILE if router is not None else None,
            clusters=entries,
            golden=dict(GOLDEN_FILES),
            files=files,
            metrics=metrics,
            metadata=metadata,
            producer=_producer(),
            quantization=quantize,
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

    from torchrec.inference.modules import quantize_embeddings

    out, diffs = [], []
    with torch.no_grad():
        for model in models:
            model.eval()
            q = quantize_embeddings(copy.deepcopy(model), dtype=QUANTIZATIONS[kind], inplace=True).eval()
            diffs.append((torch.sigmoid(q(*inputs)) - torch.sigmoid(model(*inputs))).abs().double())
            out.append(q)
    every = torch.cat(diffs)
    report = {"dtype": kind, "rows": int(inputs[0].shape[0]), "max_abs_prob_change": float(every.max()),
              "mean_abs_prob_change": float(every.mean())}
    return out, report


def _check_example_ids(spec: FeatureSpec, batch: FeatureBatch) -> None:
    for f, ids in zip(spec.fields, batch.ids):
        if len(ids) and (ids.min() < 0 or ids.max() >= f.num_embeddings):
            raise BundleError(f"example ids of field {f.name!r} outside [0, {f.num_embeddings})")


def _tables(model: nn.Module, spec: FeatureSpec, what: str) -> list[dict[str, Any]]:
    """The model's embedding tables; refuses tables smaller than the spec's id range
    (serving validates ids against the spec, so a smaller table would be read past its end)."""
    if not isinstance(model, nn.Module):
        raise BundleError(f"{what} is a {type(model).__name__}, not an nn.Module")
    tables = []
    for module in model.modules():
        if not isinstance(module, EmbeddingBagCollection):
            continue
        for cfg in module.embedding_bag_configs():
            for feature in cfg.feature_names:
                # "<field>:<tag>" = a feature the model derives from the field's ids itself (e.g. a
                # DPQ field's centroid ids, read from its codes buffer): serving never feeds it, and
                # its ids are bounded by the model, not by the field's vocabulary.
                name, derived = feature.split(DERIVED_SEP, 1)[0], DERIVED_SEP in feature
                if name not in spec.names:
                    raise BundleError(f"{what}: table {cfg.name!r} reads feature {feature!r}, not a spec field")
                need = spec.field(name).num_embeddings
                if cfg.num_embeddings < need and not derived:
                    raise BundleError(f"{what}: table {cfg.name!r} has {cfg.num_embeddings} rows but field {feature!r} has ids up to {need - 1}")
                entry = {"name": cfg.name, "feature": name, "num_embeddings": cfg.num_embeddings, "dim": cfg.embedding_dim}
                tables.append(entry | ({"derived": feature} if derived else {}))
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
        raise BundleError(f"{path.name}: torch.export failed: {type(e).__name__}: {_first_line(e)}") from e
    ep.example_inputs = None  # would be a pickle of a KJT: loading it needs weights_only=False
    torch.export.save(ep, str(path))


def _producer() -> dict[str, str]:
    import torchrec

    return {"torch": torch.__version__, "torchrec": getattr(torchrec, "__version__", "unknown")}


def _file_entry(path: Path) -> FileEntry:
    return FileEntry(_sha256(path), path.stat().st_size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


# --------------------------------------------------------------------------- loading
def read_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Parses and checks `manifest.json` only (no file hashes, no models)."""
    path = Path(bundle_dir) / MANIFEST
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; {bundle_dir} is not a bundle directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable ({e})") from None
    return Manifest.from_dict(raw, str(path))


def verify_files(bundle_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Checks every listed file's size and sha256, and that every file the loader reads
    is listed. Raises BundleError naming the first bad file."""
    root = Path(bundle_dir)
    for name, what in manifest.referenced_files().items():
        if name not in manifest.files:
            raise BundleError(f"{root / MANIFEST}: {what} file {name!r} is not in the files list")
    for name, entry in manifest.files.items():
        path = _inside(root, name)
        if not path.is_file():
            raise BundleError(f"{path}: missing ({manifest.referenced_files().get(name, 'listed file')})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{path}: {size} bytes but the manifest says {entry.bytes} (truncated or modified)")
        digest = _sha256(path)
        if digest != entry.sha256:
            raise BundleError(f"{path}: sha256 {digest[:16]}… does not match the manifest's {entry.sha256[:16]}… (corrupted or modified)")


def load_bundle(
    bundle_dir: str | os.PathLike,
    *,
    dataset: str | None = None,
    verify_outputs: bool = True,
    reuse: Mapping[str, Program] | None = None,
) -> Bundle:
    """Reads, verifies and loads a bundle.

    Args:
        bundle_dir: the bundle directory.
        dataset: when given, refuse a bundle of another dataset.
        verify_outputs: run every program on the golden rows and require the exporter's
            outputs (also warms the programs up). Only tests of the loader itself skip it.
        reuse: sha256 → an already loaded program (`Bundle.programs_by_sha256` of the
            bundle being served); a program file with that verified digest is not
            loaded again.

    Raises BundleError naming the file at fault: unsupported schema version, other
    dataset, missing/truncated/modified file, unloadable program, outputs that differ.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if dataset is not None and manifest.dataset != dataset:
        raise BundleError(f"{root / MANIFEST}: bundle is for dataset {manifest.dataset!r}, expected {dataset!r}")
    verify_files(root, manifest)
    spec_path = root / manifest.feature_spec
    try:
        spec = FeatureSpec.load(str(spec_path))
    except (FeatureSpecError, OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{spec_path}: {e}") from None
    if spec.dataset != manifest.dataset:
        raise BundleError(f"{spec_path}: dataset {spec.dataset!r} != manifest dataset {manifest.dataset!r}")
    _check_tables(root, manifest, spec)
    reuse = reuse or {}

    def program(name: str) -> Program:
        known = reuse.get(manifest.files[name].sha256)  # verify_files checked this digest
        return known if known is not None else _load_program(root / name)

    models = tuple(program(c.model) for c in manifest.clusters)
    router = program(manifest.router) if manifest.router is not None else SingleCluster()
    bundle = Bundle(root, manifest, spec, router, models)
    if verify_outputs:
        _verify_golden(bundle)
    return bundle


def _inside(root: Path, name: str) -> Path:
    """A manifest file name as a path inside the bundle (refuses absolute paths and '..')."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"{root / MANIFEST}: file name {name!r} points outside the bundle")
    return root.joinpath(*pure.parts)


def _check_tables(root: Path, manifest: Manifest, spec: FeatureSpec) -> None:
    for k, c in enumerate(manifest.clusters):
        for t in c.tables:
            f = t.get("feature")
            if f not in spec.names or (int(t.get("num_embeddings", 0)) < spec.field(f).num_embeddings and not t.get("derived")):
                raise BundleError(f"{root / MANIFEST}: cluster {k} table {t.get('name')!r} does not cover field {f!r} of the spec")


_LOAD_LOCK = threading.Lock()
_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextmanager
def _weights_only_torch_load():
    """Every torch.load inside runs weights_only (no arbitrary unpickling), even where
    torch.export.load asks for weights_only=False. Environment variables are process
    wide, hence the lock; other threads' loads only get safer meanwhile."""
    with _LOAD_LOCK:
        old = os.environ.get(_WEIGHTS_ONLY)
        os.environ[_WEIGHTS_ONLY] = "1"
        try:
            yield
        finally:
            if old is None:
                del os.environ[_WEIGHTS_ONLY]
            else:
                os.environ[_WEIGHTS_ONLY] = old


def _load_program(path: Path) -> Program:
    try:
        audit_pt2(path)
    except UnsafeProgram as e:
        raise BundleError(f"{path}: refused, the program could run code on load: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: not a readable .pt2 archive ({type(e).__name__}: {_first_line(e)})") from None
    try:
        with _weights_only_torch_load():
            ep = torch.export.load(str(path))
        module = ep.module()
    except Exception as e:  # a corrupt or hostile archive can fail in many ways
        raise BundleError(f"{path}: cannot load the exported program: {type(e).__name__}: {_first_line(e)}") from e
    _drop_input_constraint_check(module)
    return module


def _drop_input_constraint_check(module: nn.Module) -> None:
    """Removes torch.export's per-call input check. It re-evaluates the program's shape
    constraints with SymPy on every call: ~0.5 ms, 15-20% of scoring a 100-row request
    (three program calls). Every input a loaded program sees is built by
    `FeatureBatch.to_inputs`, which checks the same structure — and what that hook does
    not: that the KJT lengths agree with the values — in microseconds, after the encoder
    (or `read_golden`) range-checked every id."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del module._forward_pre_hooks[key]


def _first_line(e: Exception) -> str:
    """torch's errors run to pages; the first line says what failed."""
    lines = str(e).strip().splitlines()
    return lines[0][:500] if lines else ""


def _golden_arrays(bundle: Bundle) -> dict[str, np.ndarray]:
    root, m = bundle.path, bundle.manifest
    arrays = {}
    for role, name in m.golden.items():
        try:
            arrays[role] = np.load(_inside(root, name), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"{root / name}: unreadable golden array ({e})") from None
    k = arrays["logits"].shape[0] if arrays["logits"].ndim == 2 else None
    if k != bundle.num_clusters:
        raise BundleError(f"{root / m.golden['logits']}: outputs of {k} cluster models, the manifest lists {bundle.num_clusters}")
    return arrays


def _golden_inputs(bundle: Bundle, arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    sparse = KeyedJaggedTensor(
        keys=bundle.spec.names,
        values=torch.from_numpy(arrays["values"]),
        lengths=torch.from_numpy(arrays["lengths"]),
    )
    return torch.from_numpy(arrays["dense"]), sparse


def read_golden(bundle: Bundle) -> Golden:
    """The bundle's golden rows and outputs, checked against the spec before any program
    sees them: a hash-consistent but crafted golden file must not feed FBGEMM ids out of
    range or lengths that disagree with the values."""
    arrays = _golden_arrays(bundle)
    try:
        batch = FeatureBatch.from_inputs(bundle.spec, *_golden_inputs(bundle, arrays))
        batch.check()
    except (ValueError, RuntimeError, TypeError) as e:
        raise BundleError(f"{bundle.path}: golden rows do not match the feature spec: {_first_line(e)}") from None
    for f, ids in zip(bundle.spec.fields, batch.ids):
        if len(ids) and (ids.min() < 0 or ids.max() >= f.num_embeddings):
            raise BundleError(f"{bundle.path}: golden ids of field {f.name!r} outside [0, {f.num_embeddings})")
    g = batch.num_rows
    logits, clusters = arrays["logits"], arrays["clusters"]
    if logits.shape != (bundle.num_clusters, g) or clusters.shape != (g,) or clusters.dtype.kind not in "iu":
        raise BundleError(f"{bundle.path}: golden outputs have shapes {logits.shape} / {clusters.shape}, expected "
                          f"({bundle.num_clusters}, {g}) / ({g},)")
    return Golden(batch, logits, clusters)


def _verify_golden(bundle: Bundle) -> None:
    root, m = bundle.path, bundle.manifest
    golden = read_golden(bundle)
    try:
        inputs = golden.batch.to_inputs(bundle.spec.names)
        with torch.inference_mode():
            clusters = bundle.router(*inputs)
            outs = [model(*inputs) for model in bundle.models]
    except Exception as e:
        raise BundleError(f"{root}: a program failed on the golden rows: {type(e).__name__}: {_first_line(e)}") from e
    if not np.array_equal(clusters.numpy(), golden.clusters):
        raise BundleError(f"{root / (m.router or MANIFEST)}: routes the golden rows differently from the exporter's router")
    for c, out in enumerate(outs):
        diff = float(np.max(np.abs(out.numpy() - golden.logits[c]))) if golden.batch.num_rows else 0.0
        if not diff <= GOLDEN_ATOL:
            raise BundleError(f"{root / m.clusters[c].model}: logits differ from the exporter's by {diff:.3g} (> {GOLDEN_ATOL})")
