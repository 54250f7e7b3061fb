"""What a search decides, as a typed, versioned record: the only input of retrain and export.

A search method ends in one `Decisions`; the recipe writes it to OUT/decisions.json and
into the bundle manifest, builds every cluster model from it and never reads a method's
private state. Everything a method wants to show beyond the decisions (α, histograms,
k-means steps) goes into `details`, which retrain and export ignore.

Per cluster and per field: the dim, the kept columns of the searched full-width embedding
(iHAS; None = the first `dim` columns) and how the field's ids are stored. Kept feature
interactions carry their interaction function; numerical fields carry how the model embeds
them (and AutoDis fields the AutoDis settings); clustered decisions carry the router's
parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

# Version 2 added the numerical embeddings "autodis" / "scalar" and the AutoDis settings,
# interactions of orders 3-4 with their functions, the interaction model and shared tables; a version-1
# record reads as the same decisions (numerical fields bucketized, the base model's pairs).
VERSION = 2
READABLE_VERSIONS = (1, 2)
STORAGE_KINDS = ("full", "others", "dpq", "int8", "int4")
INTERACTION_FUNCTIONS = ("inner", "vector_kernel", "scalar_kernel", "outer")
INTERACTION_MODELS = ("base", "aim")
MAX_ORDER = 4  # highest interaction order a model computes
# bucketized: the field's table row of its Criteo bucket token; autodis: AutoDis over the
# value (trainer.models.autodis); scalar: the standardised value times one learned vector
NUMERICAL_ENCODINGS = ("bucketized", "autodis", "scalar")
AGGREGATIONS = ("max", "topk", "weighted")
PROJECTIONS = ("linear", "leaky_skip")
QUANTIZATIONS = ("none", "int8", "fp16", "int4")
SERVED_BY = ("self", "base")


class DecisionsError(ValueError):
    """A decisions record that cannot be read or does not fit the data."""


@dataclass(frozen=True)
class Storage:
    """How one field's ids are stored.

    Args:
        kind: "full" (every id its own row), "others" (ids >= n_full share one row),
            "dpq" (ids >= n_full product-quantized with K centroids in D sub-spaces) or
            "int8" / "int4" (ids >= n_full keep rows of 8- / 4-bit integers).
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
    """A kept feature interaction, the function that scores it, and optionally the weight
    a retrain starts it from (learned on: AutoFIS's retrain keeps its α as attention
    units); None = unweighted."""

    fields: tuple[str, ...]
    function: str = "inner"
    weight: float | None = None


@dataclass(frozen=True)
class RouterDecision:
    """iHAS routing: deterministic gates (histogram threshold) then the nearest centroid.

    Args:
        centroids: K × (N·d) centroids of the clustered features (K × N for "saliency";
            for "ids", K × 1: each cluster's log prior, the mixture's per-id tables being
            refitted from the training rows with the same seeds).
        threshold_bins: histogram bins of the threshold searcher.
        threshold_fallback: threshold of rows whose histogram has no valley.
        features: what is clustered: "masked" (E ⊙ m), "mask" (m), "prob" (p), "logit",
            "saliency" or "ids" (trainer.search.ihas.method.CLUSTER_ON).
        scale: per-column factors applied before the distance, or None.
    """

    centroids: list[list[float]]
    threshold_bins: int
    threshold_fallback: float
    features: str = "masked"
    scale: list[float] | None = None


@dataclass(frozen=True)
class AutoDisSettings:
    """How every "autodis" field is embedded (trainer.models.autodis).

    Args:
        buckets: H, meta-embeddings per field.
        temperature: τ of the softmax over the H discretization logits.
        aggregation: "max" (the most likely meta-embedding), "topk" (sum of the top_k most
            likely) or "weighted" (probability-weighted average of all H).
        top_k: K of "topk".
        projection: "linear" (logit_h = w_h·x) or "leaky_skip" (the paper's network:
            h = LeakyReLU(w·x), logits = W h + skip·h).
        skip: the skip-connection factor of "leaky_skip".
    """

    buckets: int = 20
    temperature: float = 1.0
    aggregation: str = "weighted"
    top_k: int = 3
    projection: str = "linear"
    skip: float = 0.1

    def problems(self) -> list[str]:
        p = []
        if self.buckets < 2:
            p.append(f"buckets: need H >= 2, got {self.buckets}")
        if not self.temperature > 0:
            p.append(f"temperature: must be > 0, got {self.temperature}")
        if self.aggregation not in AGGREGATIONS:
            p.append(f"aggregation: {self.aggregation!r} is not one of {AGGREGATIONS}")
        if not 1 <= self.top_k <= self.buckets:
            p.append(f"top_k: must be in [1, buckets = {self.buckets}], got {self.top_k}")
        if self.projection not in PROJECTIONS:
            p.append(f"projection: {self.projection!r} is not one of {PROJECTIONS}")
        return p


@dataclass(frozen=True)
class Decisions:
    """The whole outcome of a search (see the module docstring).

    Args:
        method: the method (or variant) that produced it.
        clusters: one entry per cluster model, ids 0..K-1 in order.
        interactions: kept interactions; None = the base model's own (all of them).
        interaction_model: "base" (the base model computes its kept inner-product
            interactions) or "aim" (trainer.models.aim: each interaction with its function,
            kept dims placed at their positions).
        function_wise: with "aim", one embedding set per interaction function instead of one shared set.
        numerical: numerical field → how the model embeds it (NUMERICAL_ENCODINGS); a
            field not named is bucketized.
        autodis: the AutoDis settings; required when a field is "autodis".
        router: routing parameters; None for one cluster.
        quantize: storage of the exported tables ("none", "int8", "fp16", "int4").
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
    interaction_model: str = "base"
    function_wise: bool = False
    numerical: dict[str, str] = field(default_factory=dict)
    router: RouterDecision | None = None
    quantize: str = "none"
    details: dict = field(default_factory=dict)
    version: int = VERSION
    autodis: AutoDisSettings | None = None
    shared_tables: bool = False

    def __post_init__(self) -> None:
        if [c.id for c in self.clusters] != list(range(len(self.clusters))):
            raise DecisionsError(f"cluster ids must be 0..K-1 in order, got {[c.id for c in self.clusters]}")
        if len(self.clusters) > 1 and self.router is None:
            raise DecisionsError(f"{len(self.clusters)} clusters need a router")
        if self.router is not None and len(self.router.centroids) != len(self.clusters):
            raise DecisionsError(f"router has {len(self.router.centroids)} centroids for {len(self.clusters)} clusters")
        if self.interaction_model not in INTERACTION_MODELS:
            raise DecisionsError(f"interaction_model {self.interaction_model!r} is not one of {INTERACTION_MODELS}")
        if self.interaction_model == "base" and any(i.function != "inner" for i in self.interactions or ()):
            raise DecisionsError("interaction functions other than 'inner' need interaction_model 'aim'")
        if self.shared_tables and (self.router is None or any(c.compressed or c.served_by != "self" for c in self.clusters)):
            raise DecisionsError("shared tables need a router and plain tables served by the clusters' own heads")
        if self.quantize not in QUANTIZATIONS:
            raise DecisionsError(f"quantize {self.quantize!r} is not one of {QUANTIZATIONS}")
        bad = sorted({e for e in self.numerical.values() if e not in NUMERICAL_ENCODINGS})
        if bad:
            raise DecisionsError(f"numerical encodings {bad} are not one of {NUMERICAL_ENCODINGS}")
        if "autodis" in self.numerical.values() and self.autodis is None:
            raise DecisionsError("numerical fields encoded 'autodis' need the autodis settings")
        if self.autodis is not None and self.autodis.problems():
            raise DecisionsError(f"autodis settings: {'; '.join(self.autodis.problems())}")
        for i in self.interactions or ():
            if i.function not in INTERACTION_FUNCTIONS or not 2 <= len(i.fields) <= MAX_ORDER:
                raise DecisionsError(f"interaction {i}: orders 2..{MAX_ORDER} with {INTERACTION_FUNCTIONS} are supported")
        weighted = [i for i in self.interactions or () if i.weight is not None]
        if weighted and (self.interaction_model != "base" or len(weighted) != len(self.interactions)
                         or any(len(i.fields) != 2 or not math.isfinite(i.weight) for i in weighted)):
            raise DecisionsError("interaction weights need the base interaction model, a finite weight on every kept "
                                 "interaction, and pairs only")

    def model_options(self) -> dict:
        """The build_model keywords every cluster model of these decisions shares."""
        options = {"interactions": self.interactions, "interaction_model": self.interaction_model,
                   "function_wise": self.function_wise}
        embedded = self.embedded_numerical
        return options | ({"numerical": embedded, "autodis": self.autodis} if embedded else {})

    def replace(self, **changes) -> "Decisions":
        return replace(self, **changes)

    @property
    def embedded_numerical(self) -> dict[str, str]:
        """Numerical fields the model embeds from their value (not bucketized)."""
        return {n: e for n, e in self.numerical.items() if e != "bucketized"}

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
            if obj.get("version") not in READABLE_VERSIONS:
                raise DecisionsError(f"decisions version {obj.get('version')!r}, this trainer reads versions {READABLE_VERSIONS}")
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
                interactions=None if inter is None else tuple(Interaction(tuple(i["fields"]), i["function"], i.get("weight")) for i in inter),
                interaction_model=obj.get("interaction_model", "base"),  # version 1 lacks both
                function_wise=bool(obj.get("function_wise", False)),
                numerical=dict(obj["numerical"]),
                router=None if obj["router"] is None else RouterDecision(**obj["router"]),
                quantize=obj["quantize"],
                details=dict(obj["details"]),
                autodis=None if obj.get("autodis") is None else AutoDisSettings(**obj["autodis"]),
                shared_tables=bool(obj.get("shared_tables", False)),  # absent in records written before it existed
            )
        except (KeyError, TypeError) as e:
            raise DecisionsError(f"decisions record is missing or mistypes {e}") from None


def uniform(method: str, names: list[str], dims: dict[str, int], train_rows: int,
            storage: dict[str, Storage] | None = None, numerical: dict[str, str] | None = None,
            autodis: AutoDisSettings | None = None) -> Decisions:
    """One cluster with the given dims (and storage) for every field: Base, FE, Others, a fixed grid."""
    storage = storage or {}
    fields = {n: FieldDecision(dims[n], None, storage.get(n, FULL)) for n in names}
    return Decisions(method, (ClusterDecision(0, fields, train_rows),), numerical=dict(numerical or {}), autodis=autodis)
