"""The bundle: what an export job writes and the server loads.

`manifest` owns the directory layout and manifest.json, `export` writes bundles,
`verify` loads them (integrity, audit, golden outputs), `size` measures what they store.
"""

from serving.bundle.export import write_bundle
from serving.bundle.manifest import MANIFEST, SCHEMA_VERSION, BundleError, read_manifest
from serving.bundle.size import served_bytes
from serving.bundle.verify import GOLDEN_ATOL, Bundle, load_bundle, read_golden

__all__ = [
    "GOLDEN_ATOL",
    "MANIFEST",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "load_bundle",
    "read_golden",
    "read_manifest",
    "served_bytes",
    "write_bundle",
]
