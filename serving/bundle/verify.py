"""Loading a bundle: integrity, safety and output checks before any program serves.

Loading never runs code chosen by the bundle: every file's sha256 and size are checked
against the manifest first; each .pt2 is audited (`serving.pt2_audit`: no pickles, only
allowlisted operators, guard and shape expressions that cannot call out); and loads run
with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (torch's own switch, which overrides the
`torch.load(weights_only=False)` fallback inside `torch.export.load`). Each program file
is read once: its sha256 is checked again, and the audit and torch.export.load both
work on those same bytes, so a file swapped after the checks is never what loads. The exporter
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
import io
import os
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from serving.batch import FeatureBatch
from serving.bundle.manifest import MANIFEST, BundleError, Manifest, _sha256, read_manifest
from serving.features import FeatureSpec, FeatureSpecError
from serving.pt2_audit import UnsafeProgram, audit_pt2

# Loaded programs must match the exporter's outputs this closely (float32 logits; the same
# kernels run on both sides, so real differences are ~1e-7).
GOLDEN_ATOL = 1e-5


class SingleCluster(nn.Module):
    """The router of a bundle without one: every row goes to cluster 0."""

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return torch.zeros(dense.shape[0], dtype=torch.long)


Program = Callable[[torch.Tensor, KeyedJaggedTensor], torch.Tensor]


class RoutedOutput(nn.Module):
    """One output of a routed program (router and clusters over one table set), so a routed
    bundle offers the same `router` and `models` as one of separate programs: the cluster
    ids (k None) or cluster k's logits. `Predictor` calls the routed program once instead.

    Args:
        program: (dense, sparse) → (logits [B, K], cluster ids [B]).
        k: which output.
    """

    def __init__(self, program: Program, k: int | None):
        super().__init__()
        self.program, self.k = program, k

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        logits, clusters = self.program(dense, sparse)
        return clusters if self.k is None else logits[:, self.k]


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
        routed: the routed program of a bundle whose clusters share one table set (router
            and models then read its outputs), else None.
    """

    path: Path
    manifest: Manifest
    spec: FeatureSpec
    router: Program
    models: tuple[Program, ...]
    routed: Program | None = None

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
        if self.routed is not None:
            return {files[self.manifest.routed].sha256: self.routed}
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


def check_ids(spec: FeatureSpec, batch: FeatureBatch, what: str) -> None:
    """Refuses ids outside their field's table before a program sees them: FBGEMM would
    read past the table's end."""
    for f, ids in zip(spec.fields, batch.ids):
        if len(ids) and (ids.min() < 0 or ids.max() >= f.num_embeddings):
            raise BundleError(f"{what} ids of field {f.name!r} outside [0, {f.num_embeddings})")


def check_table(spec: FeatureSpec, table: dict[str, Any], where: str) -> None:
    """Refuses a table entry (a ClusterEntry.tables item) smaller than its field's id range:
    serving validates ids against the spec, so a smaller table would be read past its end.
    A derived feature's ids are bounded by the model, not by the field's vocabulary."""
    name, field = table.get("name"), table.get("feature")
    if field not in spec.names:
        raise BundleError(f"{where}: table {name!r} reads feature {table.get('derived') or field!r}, not a spec field")
    rows, need = int(table.get("num_embeddings", 0)), spec.field(field).num_embeddings
    if rows < need and not table.get("derived"):
        raise BundleError(f"{where}: table {name!r} has {rows} rows but field {field!r} has ids up to {need - 1}")


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
    for k, c in enumerate(manifest.clusters):
        for t in c.tables:
            check_table(spec, t, f"{root / MANIFEST}: cluster {k}")
    reuse = reuse or {}

    def program(name: str) -> Program:
        known = reuse.get(manifest.files[name].sha256)  # verify_files checked this digest
        return known if known is not None else _load_program(root / name, manifest.files[name].sha256)

    routed = None
    if manifest.routed is not None:
        routed = program(manifest.routed)
        models = tuple(RoutedOutput(routed, k) for k in range(len(manifest.clusters)))
        router = RoutedOutput(routed, None)
    else:
        models = tuple(program(c.model) for c in manifest.clusters)
        router = program(manifest.router) if manifest.router is not None else SingleCluster()
    bundle = Bundle(root, manifest, spec, router, models, routed)
    if verify_outputs:
        _verify_golden(bundle)
    return bundle


def _inside(root: Path, name: str) -> Path:
    """A manifest file name as a path inside the bundle (refuses absolute paths and '..')."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"{root / MANIFEST}: file name {name!r} points outside the bundle")
    return root.joinpath(*pure.parts)


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


def _load_program(path: Path, sha256: str) -> Program:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: unreadable ({e})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(f"{path}: changed since its sha256 was checked (modified while loading)")
    try:
        audit_pt2(data)
    except UnsafeProgram as e:
        raise BundleError(f"{path}: refused, the program could run code on load: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: not a readable .pt2 archive ({type(e).__name__}: {first_line(e)})") from None
    try:
        with _weights_only_torch_load():
            ep = torch.export.load(io.BytesIO(data))
        module = ep.module()
    except Exception as e:  # a corrupt or hostile archive can fail in many ways
        raise BundleError(f"{path}: cannot load the exported program: {type(e).__name__}: {first_line(e)}") from e
    _drop_runtime_checks(module)
    return module


# Graph nodes that only check, never compute: torch.export's runtime assertions on the
# data-dependent sizes (each field's value count ≥ 0, the counts summing to the number of
# values) and on tensor dtypes.
_RUNTIME_CHECKS = ("aten._assert_scalar.default", "aten._assert_tensor_metadata.default")


def _drop_runtime_checks(module: nn.Module) -> None:
    """Removes torch.export's per-call checks from a loaded program: the input-constraint
    hook, which re-evaluates the shape constraints with SymPy on every call (~0.5 ms a
    request), and the assertion nodes in the graph with the arithmetic that only feeds
    them (a third of a DeepFM cluster model's nodes; each costs a Python dispatch).
    Every input a loaded program sees is built by `FeatureBatch.to_inputs`, which checks
    the same structure (int64 values, int32 lengths, float32 dense rows, per field
    non-negative lengths summing to its number of values) in microseconds, after the
    encoder (or `read_golden`) range-checked every id. Only checks go: the golden rows
    then run through the program as it will serve."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del module._forward_pre_hooks[key]
    for gm in module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        checks = [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) in _RUNTIME_CHECKS and not n.users]
        for node in checks:
            gm.graph.erase_node(node)
        if checks:
            gm.graph.eliminate_dead_code()  # the size arithmetic that fed only the checks
            gm.recompile()


def first_line(e: Exception) -> str:
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
        raise BundleError(f"{bundle.path}: golden rows do not match the feature spec: {first_line(e)}") from None
    check_ids(bundle.spec, batch, f"{bundle.path}: golden")
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
        raise BundleError(f"{root}: a program failed on the golden rows: {type(e).__name__}: {first_line(e)}") from e
    if not np.array_equal(clusters.numpy(), golden.clusters):
        raise BundleError(f"{root / (m.router or m.routed or MANIFEST)}: routes the golden rows differently from the exporter's router")
    for c, out in enumerate(outs):
        diff = float(np.max(np.abs(out.numpy() - golden.logits[c]))) if golden.batch.num_rows else 0.0
        if not diff <= GOLDEN_ATOL:
            raise BundleError(f"{root / m.clusters[c].model}: logits differ from the exporter's by {diff:.3g} (> {GOLDEN_ATOL})")
