"""The [data] section of an experiment: which source, how to read it, where to cache it.

    [data]
    source = "criteo"
    path = "/data/criteo/train.txt"
    max_bad_lines = 100
    numerical = { "*" = "quantile:32", I3 = "raw" }

`load_dataset(cfg)` builds (or reuses) the cache and returns the CachedDataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from serving.encodings import Encoding, FeatureSpecError
from trainer.data.cache import CHUNK_ROWS, CachedDataset, build_or_load
from trainer.data.readers.avazu import AvazuReader
from trainer.data.readers.base import KINDS, NAME_RE, Head, Reader
from trainer.data.readers.criteo import CriteoReader
from trainer.data.readers.encoded import EVERY, Encoded
from trainer.data.readers.ml1m import MovieLens1MReader
from trainer.data.readers.ml100k import NUMERIC_ATTRIBUTES, MovieLens100KReader
from trainer.data.readers.synthetic import SyntheticParams, SyntheticReader
from trainer.data.readers.table import TableReader

# Criteo / Avazu: the usual published preprocessing (rare ids → OOV); MovieLens and the
# synthetic data are small-vocabulary and keep everything seen in train.
DEFAULT_MIN_COUNT = {"movielens100k": 1, "movielens1m": 1, "criteo": 10, "avazu": 5, "table": 1, "synthetic": 1}
SOURCES = tuple(DEFAULT_MIN_COUNT)
NEEDS_PATH = ("movielens1m", "criteo", "avazu", "table")
TABLE_KEYS = ("delimiter", "label", "label_positive", "fields", "bag_sep")
SYNTHETIC_KEYS = tuple(f.name for f in dataclasses.fields(SyntheticParams) if f.name != "seed")


@dataclass
class DataConfig:
    """Where the rows come from and how they are preprocessed.

    Args:
        source: movielens100k | movielens1m | criteo | avazu | table | synthetic.
        path: the source: movielens100k: the recbole-1.2.1 wheel (default
            data/downloads/recbole-1.2.1-py3-none-any.whl, fetched by `make setup`);
            movielens1m: the directory with ratings.dat, users.dat, movies.dat; criteo /
            avazu / table: the file (.gz allowed). Unused by synthetic.
        min_count: tokens seen fewer times in the train split map to OOV (id 0). Default
            per source: criteo 10, avazu 5, everything else 1.
        seed: seed of the train/val/test assignment (and of the synthetic generator).
        cache_dir: root of the preprocessed caches.
        max_rows: use only the first max_rows rows of the source (0 = all).
        max_bad_lines: malformed lines that may be skipped (counted, reported in the
            cache meta) before the build fails; 0 = the first one fails it.
        split: train/val/test proportions (8:1:1 as in the papers).
        chunk_rows: rows per streamed chunk while building (bounds memory).
        numerical: numerical field → encoding, for any source with numerical fields:
            "log" (the default: floor(ln(x)^2) buckets), "quantile" / "quantile:N" (N
            equal-count bins fitted on the train split; 16 when N is left out) or "raw"
            (the standardised value as dense input; needs model.dense_input) or
            "autodis" (the model embeds the value: the AutoDis method; tokens stay
            Criteo buckets). The key "*" sets every numerical field not named.
        as_numbers: movielens100k: attributes read as numerical fields instead of
            tokens (any of "age", "release_year"; the AutoDis variant).
        delimiter: table: cell separator (one character, "\\t" for TSV).
        label: table: name of the label column.
        label_positive: table: label values that count as a click (e.g. ["yes"]); any
            other non-empty value is a 0. Empty (default): labels are the numbers 0 / 1.
        fields: table: column → kind ("categorical" | "numerical" | "bag"), model order.
        bag_sep: table: separator of tokens inside a bag cell.
        rows: synthetic: number of rows.
        n_categorical: synthetic: categorical fields (C1..).
        n_numerical: synthetic: numerical fields (I1..).
        vocab_min: synthetic: smallest vocabulary (vocab sizes are log-uniform).
        vocab_max: synthetic: largest vocabulary.
        zipf_a: synthetic: Zipf exponent of the ids.
        n_groups: synthetic: planted sub-populations.
        signal_fields_per_group: synthetic: fields that drive each group's clicks.
        interactions_2: synthetic: planted field pairs carrying signal (0 = none).
        interactions_3: synthetic: planted field triples carrying signal (0 = none).
        numerical_signal: synthetic: std scale of a non-linear click signal in the
            numerical fields' values (0 = none, the default; see readers/synthetic.py).
        pure_interactions: synthetic: planted factors standardised on their field's id
            distribution, so a planted tuple carries no lower-order signal (default off).
        interaction_rank: synthetic: width r of every planted factor; a planted pair is then
            an inner product of rank r (default 1).
    """

    source: str = "movielens100k"
    path: str = ""
    min_count: int | None = None
    seed: int = 0
    cache_dir: str = ".cache/data"
    max_rows: int = 0
    max_bad_lines: int = 0
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    chunk_rows: int = CHUNK_ROWS
    numerical: dict[str, str] = field(default_factory=dict)
    as_numbers: list[str] = field(default_factory=list)
    delimiter: str = ","
    label: str = "label"
    label_positive: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    bag_sep: str = "|"
    rows: int = SyntheticParams.rows
    n_categorical: int = SyntheticParams.n_categorical
    n_numerical: int = SyntheticParams.n_numerical
    vocab_min: int = SyntheticParams.vocab_min
    vocab_max: int = SyntheticParams.vocab_max
    zipf_a: float = SyntheticParams.zipf_a
    n_groups: int = SyntheticParams.n_groups
    signal_fields_per_group: int = SyntheticParams.signal_fields_per_group
    interactions_2: int = SyntheticParams.interactions_2
    interactions_3: int = SyntheticParams.interactions_3
    numerical_signal: float = SyntheticParams.numerical_signal
    pure_interactions: bool = SyntheticParams.pure_interactions
    interaction_rank: int = SyntheticParams.interaction_rank

    def __post_init__(self) -> None:
        if self.min_count is None:
            self.min_count = DEFAULT_MIN_COUNT.get(self.source, 1)
        self.split = [float(s) for s in self.split]

    def synthetic_params(self) -> SyntheticParams:
        return SyntheticParams(**{k: getattr(self, k) for k in SYNTHETIC_KEYS}, seed=self.seed)

    def encodings(self) -> dict[str, Encoding]:
        """`numerical` parsed (call after validate: a bad value raises FeatureSpecError)."""
        return {name: Encoding.parse(text) for name, text in self.numerical.items()}

    def raw_fields(self) -> list[str]:
        """Names (or "*") whose encoding is "raw": the model must read the dense input."""
        return [name for name, text in self.numerical.items() if text == "raw"]

    def validate(self) -> list[str]:
        """Every problem found, as "data.<key>: message" strings."""
        p = []
        if self.source not in SOURCES:
            p.append(f"data.source: {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.source in NEEDS_PATH and not self.path:
            p.append(f"data.path: source {self.source!r} needs the path of its data")
        if self.source == "synthetic" and self.path:
            p.append("data.path: not used by source 'synthetic'")
        for key in ("min_count", "chunk_rows"):
            if getattr(self, key) < 1:
                p.append(f"data.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("seed", "max_rows", "max_bad_lines"):
            if getattr(self, key) < 0:
                p.append(f"data.{key}: must be >= 0, got {getattr(self, key)}")
        if not self.cache_dir:
            p.append("data.cache_dir: must not be empty")
        if len(self.split) != 3 or min(self.split, default=0) < 0 or not sum(self.split) > 0:
            p.append(f"data.split: need 3 non-negative train/val/test proportions, got {self.split}")
        p += self._numerical_problems()
        if self.as_numbers and self.source != "movielens100k":
            p.append("data.as_numbers: only used by source 'movielens100k'")
        bad = sorted(set(self.as_numbers) - set(NUMERIC_ATTRIBUTES))
        if bad:
            p.append(f"data.as_numbers: {bad} are not among the attributes readable as numbers {list(NUMERIC_ATTRIBUTES)}")
        defaults = DataConfig()
        if self.source == "table":
            p += self._table_problems()
        else:
            p += [
                f"data.{k}: only used by source 'table'" for k in TABLE_KEYS if getattr(self, k) != getattr(defaults, k)
            ]
        if self.source == "synthetic":
            p += [f"data.{msg}" for msg in self.synthetic_params().problems()]
        else:
            p += [
                f"data.{k}: only used by source 'synthetic'"
                for k in SYNTHETIC_KEYS
                if getattr(self, k) != getattr(defaults, k)
            ]
        return p

    def _numerical_problems(self) -> list[str]:
        p = []
        for name, text in self.numerical.items():
            if name != EVERY and not NAME_RE.match(name):
                p.append(f"data.numerical.{name}: not a field name (or \"{EVERY}\" for every numerical field)")
            try:
                Encoding.parse(text)
            except FeatureSpecError as e:
                p.append(f"data.numerical.{name}: {e}")
            if self.source != "table" or name == EVERY:
                continue  # other sources' fields are known once the reader is open (make_reader)
            kind = self.fields.get(name)
            if kind is None:
                p.append(f"data.numerical.{name}: not in data.fields")
            elif kind != "numerical":
                p.append(f"data.numerical.{name}: only numerical fields have an encoding; data.fields says {kind!r}")
        return p

    def _table_problems(self) -> list[str]:
        p = []
        if len(self.delimiter) != 1:
            p.append(f"data.delimiter: must be one character, got {self.delimiter!r}")
        if not self.label:
            p.append("data.label: name the label column")
        if not self.fields:
            p.append('data.fields: name at least one column, e.g. fields = { user = "categorical" }')
        for name, kind in self.fields.items():
            if kind not in KINDS:
                p.append(f"data.fields.{name}: kind {kind!r} is not one of {', '.join(KINDS)}")
            if not NAME_RE.match(name):
                p.append(f"data.fields.{name}: use letters, digits, '_', '.', '-' in field names")
        if self.label in self.fields:
            p.append(f"data.fields: the label column {self.label!r} cannot also be a field")
        if not self.bag_sep:
            p.append("data.bag_sep: must not be empty")
        if any(not v.strip() or v != v.strip() for v in self.label_positive):
            p.append(f"data.label_positive: values must be non-empty, without surrounding spaces, got {self.label_positive}")
        if len(set(self.label_positive)) != len(self.label_positive):
            p.append(f"data.label_positive: a value is listed twice in {self.label_positive}")
        return p


READERS: dict[str, Callable[[DataConfig], Reader]] = {
    "movielens100k": lambda c: MovieLens100KReader(c.path or None, c.max_bad_lines, tuple(c.as_numbers)),
    "movielens1m": lambda c: MovieLens1MReader(c.path, c.max_bad_lines),
    "criteo": lambda c: CriteoReader(c.path, c.max_bad_lines),
    "avazu": lambda c: AvazuReader(c.path, c.max_bad_lines),
    "table": lambda c: TableReader(
        c.path, c.label, c.fields, delimiter=c.delimiter, bag_sep=c.bag_sep, max_bad_lines=c.max_bad_lines,
        label_positive=c.label_positive,
    ),
    "synthetic": lambda c: SyntheticReader(c.synthetic_params()),
}


def make_reader(cfg: DataConfig) -> Reader:
    """The configured source, with its numerical encodings (capped at max_rows when set)."""
    problems = cfg.validate()
    if problems:
        raise ValueError("invalid data config:\n" + "\n".join(f"  - {x}" for x in problems))
    reader = READERS[cfg.source](cfg)
    if cfg.numerical:
        reader = Encoded(reader, cfg.encodings())
    return Head(reader, cfg.max_rows) if cfg.max_rows else reader


def dense_input_problems(data: DataConfig, reads_dense: bool) -> list[str]:
    """Cross-section check: a "raw" field's value reaches the model only as dense input.

    Args:
        data: the data section.
        reads_dense: whether the model feeds the dense input (model.dense_input, or DLRM).
    """
    raw = data.raw_fields()
    if raw and not reads_dense:
        return [f"data.numerical: {raw} are encoded 'raw', which the model sees only as dense input; "
                "set model.dense_input = true (or use model.name = 'dlrm')"]
    return []


def load_dataset(cfg: DataConfig, log: Callable[[str], None] = print) -> CachedDataset:
    """The cached dataset of `cfg`: built on first use (rank 0 under torchrun), then reused.

    Args:
        cfg: the data section.
        log: progress messages.
    """
    return build_or_load(
        make_reader(cfg),
        cfg.cache_dir,
        min_count=cfg.min_count,
        seed=cfg.seed,
        split=cfg.split,
        log=log,
        chunk_rows=cfg.chunk_rows,
    )
