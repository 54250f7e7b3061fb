"""How a numerical field's raw value becomes its embedding token and its dense input.

Each numerical field has one encoding, chosen in the data config and fitted on the train
split; the fitted encoding travels inside the FeatureSpec, so the server maps a raw
request value through the same rule, with the same parameters, as the training cache.

  log       token floor(ln(x)^2) for x > 2, else floor(x) (the Criteo rule); nothing to fit.
  quantile  token = the bin of x among up to `bins` equal-count bins whose edges are
            fitted on the train values (tied values cannot be split, so ties merge bins).
  raw       the value reaches the model through the dense input, standardised with the
            train mean and std; its token only says whether the value is missing.
  autodis   the model embeds the value itself (AutoDis: soft discretization over learned
            meta-embeddings). Its dense input is signed_log(x) = sign(x)·ln(1 + |x|)
            standardised with the train mean and std of signed_log, and missing stays NaN
            there, so the exported program picks the field's learned missing embedding.
            Its token is the Criteo bucket (as "log"), so a model that does not embed the
            value (the bucketized baseline) trains on the very same cache.

Missing ("" / None) is always its own token "", so "missing" can carry signal. The dense
input (`serving.batch.dense_column`) of a log or quantile field is log(1 + max(x, 0)).
A request's NaN or infinite number is refused for every encoding; missing is "" / None.

Standard library only, like the rest of the spec: it is the training/serving contract.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

MISSING = ""
ENCODINGS = ("log", "quantile", "raw", "autodis")
STANDARDISED = ("raw", "autodis")  # encodings fitted with a train mean and std
DEFAULT_BINS = 16
# Each bin is an embedding row; a field wanting more is better served by "log" or as a
# categorical field of its own.
MAX_BINS = 1 << 16


class FeatureSpecError(ValueError):
    """A feature spec (file or in-memory) or a value to encode is invalid."""


def finite_or_none(raw: str | float | None) -> float | None:
    """A raw numerical value as a float, None when missing; refuses NaN and infinities."""
    if raw is None or raw == MISSING:
        return None
    x = float(raw)
    if math.isnan(x) or math.isinf(x):
        raise FeatureSpecError(f"numerical value {raw!r} is not finite")
    return x


def bucket_token(raw: str | float | None) -> str:
    """Criteo bucketization of a numerical value into a categorical token.

    floor(ln(x)^2) for x > 2, else the value itself (floored to an integer). Missing
    values ("" / None) are their own token, so "missing" can carry signal.
    """
    x = finite_or_none(raw)
    if x is None:
        return MISSING
    if x > 2:
        return str(int(math.floor(math.log(x) ** 2)))
    return str(int(math.floor(x)))


def dense_value(raw: str | float | None) -> float:
    """Numerical value as a dense input (DLRM bottom MLP): log(1 + max(x, 0)), missing = 0."""
    x = finite_or_none(raw)
    return 0.0 if x is None else math.log1p(max(x, 0.0))


@dataclass(frozen=True)
class Encoding:
    """One numerical field's encoding and its fitted parameters.

    An encoding parsed from a config is unfitted (no edges, mean 0, std 1); the cache
    builder fits it on the train split and stores the result in the spec.

    Args:
        name: "log", "quantile", "raw" or "autodis".
        bins: quantile: bins asked for (the fit may keep fewer).
        edges: quantile: fitted, strictly increasing bin edges; bin i holds
            edges[i-1] <= x < edges[i], so there are len(edges) + 1 bins.
        mean: raw / autodis: train mean of the dense transform's input (missing excluded).
        std: raw / autodis: its train standard deviation (1 when the values do not vary).
    """

    name: str = "log"
    bins: int = 0
    edges: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        problem = self._problem()
        if problem:
            raise FeatureSpecError(f"numerical encoding {str(self)!r}: {problem}")

    def _problem(self) -> str:
        if self.name not in ENCODINGS:
            return f"not one of {', '.join(ENCODINGS)}"
        if self.name == "quantile":
            if not 2 <= self.bins <= MAX_BINS:
                return f"bins must be in [2, {MAX_BINS}], got {self.bins}"
            if len(self.edges) >= self.bins:
                return f"{len(self.edges)} edges make more than {self.bins} bins"
            if not all(map(math.isfinite, self.edges)) or any(a >= b for a, b in zip(self.edges, self.edges[1:])):
                return "edges must be finite and strictly increasing"
        elif self.bins or self.edges:
            return "bins and edges belong to 'quantile'"
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            return f"need a finite mean and a finite std > 0, got {self.mean}, {self.std}"
        if self.name not in STANDARDISED and (self.mean, self.std) != (0.0, 1.0):
            return "mean and std belong to 'raw' and 'autodis'"
        return ""

    @classmethod
    def parse(cls, text: str) -> "Encoding":
        """The unfitted encoding of a config value: "log", "raw", "autodis", "quantile"
        (DEFAULT_BINS bins) or "quantile:N"."""
        name, sep, bins = text.partition(":")
        if name == "quantile":
            if not sep:
                return cls("quantile", DEFAULT_BINS)
            if not (bins.isascii() and bins.isdigit()):
                raise FeatureSpecError(f"numerical encoding {text!r}: the bin count must be an integer, e.g. 'quantile:16'")
            return cls("quantile", int(bins))
        if sep or name not in ENCODINGS:
            raise FeatureSpecError(f"numerical encoding {text!r} is not one of log, quantile, quantile:N, raw, autodis")
        return cls(name)

    def __str__(self) -> str:
        """The config form ("log", "raw", "autodis", "quantile:16"): what a cache is keyed on."""
        return f"quantile:{self.bins}" if self.name == "quantile" else self.name

    def token(self, raw: str | float | None) -> str:
        """The token of a raw value ("" = missing): what the field's vocabulary maps to an id."""
        if self.name in ("log", "autodis"):
            return bucket_token(raw)
        x = finite_or_none(raw)
        if x is None:
            return MISSING
        # a raw field has no edges: every present value is bin "0"
        return str(bisect_right(self.edges, x))

    def to_dict(self) -> dict:
        d = {"name": self.name}
        if self.name == "quantile":
            d |= {"bins": self.bins, "edges": list(self.edges)}
        elif self.name in STANDARDISED:
            d |= {"mean": self.mean, "std": self.std}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Encoding":
        return cls(str(d["name"]), int(d.get("bins", 0)), tuple(d.get("edges", ())), float(d.get("mean", 0.0)),
                   float(d.get("std", 1.0)))


LOG = Encoding()
