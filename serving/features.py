"""FeatureSpec: the fields of a dataset and how raw values become embedding ids.

This is part of the contract between training and serving (it travels inside every
bundle), so it lives in `serving` and uses nothing but the standard library: the server
maps raw request values through exactly the code that built the training cache.

Id convention for every field: id 0 is the OOV / "others" id (unseen values and values
whose train-split count is below `min_count`); vocab entry i has id i + 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

# MISSING, FeatureSpecError, bucket_token and dense_value are part of this module's API.
from serving.encodings import LOG, MISSING, Encoding, FeatureSpecError, bucket_token, dense_value  # noqa: F401

# Version 2 added per-field numerical encodings; a spec whose numerical fields all use
# "log" is still written as version 1, so servers that predate encodings keep loading it,
# while one that would misread a quantile or raw field refuses it.
SPEC_VERSION = 2
READABLE_VERSIONS = (1, 2)
OOV_ID = 0
KINDS = ("categorical", "numerical", "bag")


@dataclass(frozen=True)
class Field:
    """One input field.

    Args:
        name: field name, also the TorchRec feature name.
        kind: "categorical" (one token per row), "numerical" (a number, turned into a
            token by its `encoding`), or "bag" (multi-hot: a list of tokens per row).
        vocab: tokens kept from the train split, in id order (token vocab[i] has id i+1).
        counts: train-split count of each kept token (same order as vocab); used by
            frequency-aware methods such as AutoDPQ. Empty when unknown.
        num_ids: for pre-coded fields (synthetic data, benchmarks) whose raw values are
            already ids: the id range [0, num_ids); vocab must then be empty.
        encoding: numerical fields: the fitted rule from raw value to token (and to dense
            input); see serving.encodings. Other kinds keep the default.
    """

    name: str
    kind: str
    vocab: tuple[str, ...]
    counts: tuple[int, ...] = ()
    num_ids: int = 0
    encoding: Encoding = LOG
    _index: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FeatureSpecError(f"field {self.name!r}: kind {self.kind!r} not one of {KINDS}")
        if self.counts and len(self.counts) != len(self.vocab):
            raise FeatureSpecError(f"field {self.name!r}: {len(self.counts)} counts for {len(self.vocab)} tokens")
        if self.num_ids and self.vocab:
            raise FeatureSpecError(f"field {self.name!r}: a pre-coded field (num_ids) has no vocab")
        if self.encoding != LOG and self.kind != "numerical":
            raise FeatureSpecError(f"field {self.name!r}: only numerical fields have an encoding")
        object.__setattr__(self, "_index", {t: i + 1 for i, t in enumerate(self.vocab)})
        if len(self._index) != len(self.vocab):
            raise FeatureSpecError(f"field {self.name!r}: vocab has duplicate tokens")

    @property
    def num_embeddings(self) -> int:
        return self.num_ids or len(self.vocab) + 1

    def token_id(self, token: str) -> int:
        if self.num_ids:
            try:
                i = int(token)
            except ValueError:
                return OOV_ID
            return i if 0 <= i < self.num_ids else OOV_ID
        return self._index.get(token, OOV_ID)

    def encode(self, raw) -> int | list[int]:
        """Raw value(s) as found in the data → id(s). Bags take an iterable of tokens."""
        if self.kind == "bag":
            if isinstance(raw, str):
                raise FeatureSpecError(f"field {self.name!r} is a bag: give a list of tokens")
            return [self.token_id(str(t)) for t in raw]
        if self.kind == "numerical":
            return self.token_id(self.encoding.token(raw))
        return self.token_id(MISSING if raw is None else str(raw))


@dataclass(frozen=True)
class FeatureSpec:
    """All fields of a dataset, in the order models see them.

    Args:
        dataset: dataset id; bundles and caches refuse a spec of another dataset.
        label: name of the label column in the source data.
        fields: the fields, in model order.
        min_count: tokens seen fewer times than this in the train split map to OOV.
    """

    dataset: str
    label: str
    fields: tuple[Field, ...]
    min_count: int = 1

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FeatureSpecError(f"duplicate field names: {dup}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def numerical(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == "numerical"]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise FeatureSpecError(f"unknown field {name!r}; fields are {self.names}")

    def select(self, names: Iterable[str]) -> "FeatureSpec":
        keep = set(names)
        return FeatureSpec(self.dataset, self.label, tuple(f for f in self.fields if f.name in keep), self.min_count)

    def to_dict(self) -> dict:
        fields = []
        for f in self.fields:
            d = {"name": f.name, "kind": f.kind, "vocab": list(f.vocab), "counts": list(f.counts), "num_ids": f.num_ids}
            fields.append(d if f.encoding == LOG else d | {"encoding": f.encoding.to_dict()})
        encoded = any(f.encoding != LOG for f in self.fields)
        return {
            "spec_version": SPEC_VERSION if encoded else 1,
            "dataset": self.dataset,
            "label": self.label,
            "min_count": self.min_count,
            "fields": fields,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        try:
            if d["spec_version"] not in READABLE_VERSIONS:
                raise FeatureSpecError(f"spec_version {d['spec_version']} is not one of the supported {READABLE_VERSIONS}")
            fields = tuple(
                Field(f["name"], f["kind"], tuple(f["vocab"]), tuple(f.get("counts", ())), int(f.get("num_ids", 0)),
                      Encoding.from_dict(f["encoding"]) if "encoding" in f else LOG)
                for f in d["fields"]
            )
            return cls(d["dataset"], d["label"], fields, int(d.get("min_count", 1)))
        except (KeyError, TypeError) as e:
            raise FeatureSpecError(f"malformed feature spec: missing or bad {e}") from e

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh)

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        try:
            with open(path) as fh:
                return cls.from_dict(json.load(fh))
        except json.JSONDecodeError as e:
            raise FeatureSpecError(f"{path}: not valid JSON ({e})") from e
