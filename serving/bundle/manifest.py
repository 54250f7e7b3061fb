"""What a bundle directory holds and how its manifest.json describes it.

A bundle is a directory, immutable once written:

    manifest.json        schema version, bundle version, dataset, files (sha256 + size), clusters
    feature_spec.json    FeatureSpec (fields, vocabularies): how raw values become ids
    router.pt2           torch.export program: (dense, sparse) → LongTensor[B] cluster ids
                         (absent for a method without clusters: one cluster scores every row)
    cluster_<k>.pt2      torch.export program per cluster: (dense, sparse) → logits [B]
    routed.pt2           instead of router + cluster programs, when the clusters share one
                         set of tables: (dense, sparse) → (logits [B, K], cluster ids [B]),
                         every cluster entry names this one file
    golden/*.npy         up to 64 example rows and the exporter's in-memory outputs on them
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

SCHEMA_VERSION = 1
FORMAT = "embstack-bundle"
MANIFEST = "manifest.json"
SPEC_FILE = "feature_spec.json"
ROUTER_FILE = "router.pt2"
ROUTED_FILE = "routed.pt2"
GOLDEN_FILES = {
    "dense": "golden/dense.npy",  # float32 [G, n_numerical]
    "values": "golden/values.npy",  # int64, the KJT values
    "lengths": "golden/lengths.npy",  # int32 [n_fields * G], the KJT lengths
    "logits": "golden/logits.npy",  # float32 [K, G], every cluster model on every golden row
    "clusters": "golden/clusters.npy",  # int64 [G], the router's choice
}
# Serving-time storage of the cluster models' embedding tables (torchrec's quantized
# EmbeddingBagCollection over FBGEMM's TBE kernels; row-wise scale and bias for int8 and
# int4, two int4 values a byte).
QUANTIZATIONS = {"int8": torch.qint8, "fp16": torch.half, "int4": torch.quint4x2}
QUANTIZATION_KINDS = ("none", *QUANTIZATIONS)  # "none" = float32 tables
_CHUNK = 1 << 20


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

    @classmethod
    def of(cls, path: Path) -> "FileEntry":
        return cls(_sha256(path), path.stat().st_size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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
        routed: file of a program that routes and scores in one pass over one set of
            tables shared by the router and every cluster (then router is None and every
            cluster entry's model is this file); None = separate programs.
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
    routed: str | None = None

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
        routed = d.get("routed")  # absent in bundles written before it existed
        if routed is not None and (not isinstance(routed, str) or d.get("router") is not None
                                   or any(c.model != routed for c in clusters)):
            raise BundleError(f"{where}: invalid manifest: routed must be a file name that every cluster entry names, "
                              "with no separate router")
        if d.get("router") is None and routed is None and len(clusters) != 1:
            raise BundleError(f"{where}: invalid manifest: {len(clusters)} clusters but no router")
        if set(d["golden"]) != set(GOLDEN_FILES):
            raise BundleError(f"{where}: invalid manifest: golden must name {sorted(GOLDEN_FILES)}")
        quantization = d.get("quantization", "none")  # absent in bundles written before it existed
        if quantization not in QUANTIZATION_KINDS:
            raise BundleError(f"{where}: invalid manifest: quantization {quantization!r} is not one of {list(QUANTIZATION_KINDS)}")
        fields = {k: d[k] for k in expect if k not in ("files", "clusters")}
        return cls(SCHEMA_VERSION, clusters=clusters, files=files, router=d.get("router"), quantization=quantization,
                   routed=routed, **fields)

    def referenced_files(self) -> dict[str, str]:
        """file → what it is, for every file the loader reads (all must be in `files`)."""
        refs = {self.feature_spec: "feature spec"}
        if self.router is not None:
            refs[self.router] = "router"
        refs.update({c.model: f"cluster {k} model" for k, c in enumerate(self.clusters)})
        if self.routed is not None:
            refs[self.routed] = "routed program (router and every cluster)"
        refs.update({name: f"golden {role}" for role, name in self.golden.items()})
        return refs


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
