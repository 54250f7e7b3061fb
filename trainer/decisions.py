"""What a search decides, as a typed, versioned record: the only input of retrain and export.

A search method ends in one `Decisions`; the recipe writes it to OUT/decisions.json and
into the bundle manifest, builds every cluster model from it and never reads a method's
private state. Everything a method wants to show beyond the decisions (α, histograms,
k-means steps) goes into `details`, which retrain and export ignore.

Per cluster and per field: the dim, the kept columns of the searched full-width embedding
(iHAS; None = the first `dim` columns) and how the field's ids are stored. Kept feature
interactions carry their interaction function; numerical fields carry their encoding;
clustered decisions carry the router's parameters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

VERSION = 1
STORAGE_KINDS = ("full", "others", "dpq")
INTERACTION_FUNCTIONS = ("inner",)
NUMERICAL_ENCODINGS = ("bucketized",)
QUANTIZATIONS = ("none", "int8", "fp16")
SERVED_BY = ("self", "base")


class DecisionsError(ValueError):
    """A decisions record that cannot be read or does not fit the data."""


@dataclass(frozen=True)
class Storage:
    """How one field's ids are stored.

    Args:
        kind: "full" (every id its own row), "others" (ids >= n_full share one row) or
            "dpq" (ids >= n_full product-quantized with K centroids in D sub-spaces).
        n_full: ids [0, n_full) keep full rows; 0 with kind "full" means every id.
        k: dpq: centroids per sub-space.
        d: dpq: sub-spaces (divides the field's dim).
    """

    kind: str = "full"
    n_full: int = 0
    k: int = 0
    d: int = 0

    def __post_init__(self) -> None:
        if self.kind not in STORAGE_KINDS:
            raise DecisionsError(f"storage kind {self.kind!r} is not one of {STORAGE_KINDS}")
        if self.kind != "full" and self.n_full < 1:
            raise DecisionsError(f"storage {self.kind!r} needs n_full >= 1, got {self.n_full}")
        if self.kind == "dpq" and (self.k < 1 or self.d < 1):
            raise DecisionsError(f"dpq storage needs k >= 1 and d >= 1, got k={self.k}, d={self.d}")


FULL = Storage()


@dataclass(frozen=True)
class FieldDecision:
    """One field in one cluster.

    Args:
        dim: embedding dim (0 = the field is dropped).
        kept: columns of the searched embedding this field keeps (len == dim), or None.
        storage: how its ids are stored.
    """

    dim: int
    kept: tuple[int, ...] | None = None
    storage: Storage = FULL

    def __post_init__(self) -> None:
        if self.dim < 0:
            raise DecisionsError(f"dim must be >= 0, got {self.dim}")
        if self.kept is not None and len(self.kept) != self.dim:
            raise DecisionsError(f"kept columns {list(self.kept)} do not match dim {self.dim}")
        if self.storage.kind == "dpq" and self.dim % self.storage.d:
            raise DecisionsError(f"dpq D={self.storage.d} does not divide dim {self.dim}")


@dataclass(frozen=True)
class ClusterDecision:
    """One cluster's model.

    Args:
        id: cluster id (the router's output).
        fields: field → decision, every field of the spec.
        train_rows: training rows routed here when the search derived the cluster.
        served_by: "self" (the cluster's own model) or "base" (the export guard found the
            cluster's model worse than Base on the cluster's validation rows).
    """

    id: int
    fields: dict[str, FieldDecision]
    train_rows: int = 0
    served_by: str = "self"

    def __post_init__(self) -> None:
        if self.served_by not in SERVED_BY:
            raise DecisionsError(f"cluster {self.id}: served_by {self.served_by!r} is not one of {SERVED_BY}")

    @property
    def dims(self) -> dict[str, int]:
        return {n: f.dim for n, f in self.fields.items()}

    @property
    def kept(self) -> dict[str, list[int]]:
        return {n: list(f.kept) if f.kept is not None else list(range(f.dim)) for n, f in self.fields.items()}

    @property
    def compressed(self) -> bool:
        return any(f.storage.kind != "full" for f in self.fields.values())


@dataclass(frozen=True)
class Interaction:
    """A kept feature interaction and the function that scores it."""

    fields: tuple[str, ...]
    function: str = "inner"


@dataclass(frozen=True)
class RouterDecision:
    """iHAS routing: deterministic gates (histogram threshold) then the nearest centroid.

    Args:
        centroids: K × (N·d) centroids of the clustered features.
        threshold_bins: histogram bins of the threshold searcher.
        threshold_fallback: threshold of rows whose histogram has no valley.
        features: what is clustered: "masked" (E ⊙ m), "mask" (m) or "prob" (p).
        scale: per-column factors applied before the distance, or None.
    """

    centroids: list[list[float]]
    threshold_bins: int
    threshold_fallback: float
    features: str = "masked"
    scale: list[float] | None = None


@dataclass(frozen=True)
class Decisions:
    """The whole outcome of a search (see the module docstring).

    Args:
        method: the method (or variant) that produced it.
        clusters: one entry per cluster model, ids 0..K-1 in order.
        interactions: kept interactions; None = the base model's own (all of them).
        numerical: numerical field → encoding.
        router: routing parameters; None for one cluster.
        quantize: storage of the exported tables ("none", "int8", "fp16").
        details: method diagnostics, never read by retrain or export.
        version: schema version of this record.
        shared_tables: the router and every cluster model read one set of tables (each
            cluster its kept columns, with its own head), trained as one model and served
            as one program; False = a model with its own tables per cluster beside the
            router's (the paper's).
    """

    method: str
    clusters: tuple[ClusterDecision, ...]
    interactions: tuple[Interaction, ...] | None = None
    numerical: dict[str, str] = field(default_factory=dict)
    router: RouterDecision | None = None
    quantize: str = "none"
    details: dict = field(default_factory=dict)
    version: int = VERSION
    shared_tables: bool = False

    def __post_init__(self) -> None:
        if [c.id for c in self.clusters] != list(range(len(self.clusters))):
            raise DecisionsError(f"cluster ids must be 0..K-1 in order, got {[c.id for c in self.clusters]}")
        if len(self.clusters) > 1 and self.router is None:
            raise DecisionsError(f"{len(self.clusters)} clusters need a router")
        if self.router is not None and len(self.router.centroids) != len(self.clusters):
            raise DecisionsError(f"router has {len(self.router.centroids)} centroids for {len(self.clusters)} clusters")
        if self.shared_tables and (self.router is None or any(c.compressed or c.served_by != "self" for c in self.clusters)):
            raise DecisionsError("shared tables need a router and plain tables served by the clusters' own heads")
        if self.quantize not in QUANTIZATIONS:
            raise DecisionsError(f"quantize {self.quantize!r} is not one of {QUANTIZATIONS}")
        bad = sorted({e for e in self.numerical.values() if e not in NUMERICAL_ENCODINGS})
        if bad:
            raise DecisionsError(f"numerical encodings {bad} are not one of {NUMERICAL_ENCODINGS}")
        for i in self.interactions or ():
            if i.function not in INTERACTION_FUNCTIONS or len(i.fields) != 2:
                raise DecisionsError(f"interaction {i}: only pairs with {INTERACTION_FUNCTIONS} are supported")

    def replace(self, **changes) -> "Decisions":
        return replace(self, **changes)

    def check_fields(self, names: list[str]) -> None:
        """Raise DecisionsError unless every cluster decides exactly these fields."""
        for c in self.clusters:
            if sorted(c.fields) != sorted(names):
                raise DecisionsError(f"cluster {c.id} decides fields {sorted(c.fields)}, the data has {sorted(names)}")

    def to_json(self) -> dict:
        """Plain JSON types (tuples become lists), as json.loads gives them back."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, obj: dict) -> "Decisions":
        try:
            if obj.get("version") != VERSION:
                raise DecisionsError(f"decisions version {obj.get('version')!r}, this trainer reads version {VERSION}")
            clusters = tuple(
                ClusterDecision(
                    int(c["id"]),
                    {n: FieldDecision(int(f["dim"]), None if f["kept"] is None else tuple(f["kept"]), Storage(**f["storage"]))
                     for n, f in c["fields"].items()},
                    int(c["train_rows"]),
                    c["served_by"],
                )
                for c in obj["clusters"]
            )
            inter = obj["interactions"]
            return cls(
                method=obj["method"],
                clusters=clusters,
                interactions=None if inter is None else tuple(Interaction(tuple(i["fields"]), i["function"]) for i in inter),
                numerical=dict(obj["numerical"]),
                router=None if obj["router"] is None else RouterDecision(**obj["router"]),
                quantize=obj["quantize"],
                details=dict(obj["details"]),
                shared_tables=bool(obj.get("shared_tables", False)),  # absent in records written before it existed
            )
        except (KeyError, TypeError) as e:
            raise DecisionsError(f"decisions record is missing or mistypes {e}") from None


def uniform(method: str, names: list[str], dims: dict[str, int], train_rows: int,
            storage: dict[str, Storage] | None = None, numerical: dict[str, str] | None = None) -> Decisions:
    """One cluster with the given dims (and storage) for every field: Base, FE, Others, a fixed grid."""
    storage = storage or {}
    fields = {n: FieldDecision(dims[n], None, storage.get(n, FULL)) for n in names}
    return Decisions(method, (ClusterDecision(0, fields, train_rows),), numerical=dict(numerical or {}))
