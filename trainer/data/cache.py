"""Reader → FeatureSpec + memory-mapped arrays, built once and reused.

Pass 1 streams the reader, assigns every row to train/val/test and counts tokens on the
train rows only; the vocabularies (hence the FeatureSpec) are fixed from those counts.
Pass 2 streams the reader again and encodes straight into `.npy` memmaps. A cache lives
in `<cache_root>/<dataset>-<key>/`, key = hash of (format, reader fingerprint, min_count,
seed, split); it is written to a temporary sibling directory and renamed into place as a
whole at the end, so a directory with the final name is always complete.

Files: labels.npy float32 [N]; split.npy uint8 [N] (0 train, 1 val, 2 test);
f_<field>.npy int32/int64 [N] ids of single-valued fields; f_<field>.offsets.npy int64
[N+1] + f_<field>.values.npy for bags; dense.npy float32 [N, n_numerical] (each
numerical field's dense input, serving.batch.dense_column, in spec.numerical order);
groups.npy int32 [N] (synthetic only); c_<field>.npy int64 [num_embeddings] train count
of each id; spec.json (with each numerical field's fitted encoding); meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from serving.batch import dense_column
from serving.features import FeatureSpec, FeatureSpecError
from trainer.data.numerical import as_float
from trainer.data.readers.base import DataError, FieldDecl, RawChunk, Reader
from trainer.data.vocab import id_dtype, vocab_for

CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")
CHUNK_ROWS = 1 << 15  # ~100 MB of Python strings per chunk for a 40-column text file
CHANGED = "the source changed while the cache was being built; run again"

Log = Callable[[str], None]


@dataclass
class CachedDataset:
    """A built cache, memory-mapped (nothing is read until indexed).

    Args:
        path: the cache directory.
        spec: the FeatureSpec fitted on the train split.
        meta: build facts (rows per split, bad lines, fingerprint, build seconds, ...).
        labels: float32 [N].
        split: uint8 [N], 0 train / 1 val / 2 test.
        ids: field → int [N] ids, for categorical and numerical fields.
        bags: field → (offsets int64 [N+1], values int [total]) for bag fields.
        dense: float32 [N, n_numerical].
        groups: int32 [N] planted sub-population, or None.
        id_counts: field → int64 [num_embeddings] train count of each id (id 0 = OOV).
    """

    path: Path
    spec: FeatureSpec
    meta: dict
    labels: np.ndarray
    split: np.ndarray
    ids: dict[str, np.ndarray]
    bags: dict[str, tuple[np.ndarray, np.ndarray]]
    dense: np.ndarray
    groups: np.ndarray | None
    id_counts: dict[str, np.ndarray]
    _indices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of one split ("train", "val" or "test"), ascending."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        if split not in self._indices:
            self._indices[split] = np.flatnonzero(self.split == SPLITS.index(split))
        return self._indices[split]

    @classmethod
    def load(cls, path: str | Path) -> "CachedDataset":
        path = Path(path)
        spec = FeatureSpec.load(str(path / "spec.json"))
        meta = json.loads((path / "meta.json").read_text())
        ids, bags = {}, {}
        for f in spec.fields:
            if f.kind == "bag":
                bags[f.name] = (_load(path / f"f_{f.name}.offsets.npy"), _load(path / f"f_{f.name}.values.npy"))
            else:
                ids[f.name] = _load(path / f"f_{f.name}.npy")
        groups = path / "groups.npy"
        return cls(
            path=path,
            spec=spec,
            meta=meta,
            labels=_load(path / "labels.npy"),
            split=_load(path / "split.npy"),
            ids=ids,
            bags=bags,
            dense=_load(path / "dense.npy"),
            groups=_load(groups) if groups.exists() else None,
            id_counts={f.name: _load(path / f"c_{f.name}.npy") for f in spec.fields},
        )


def _load(path: Path) -> np.ndarray:
    """A read-only memmap viewed as a plain ndarray (cheaper to index than np.memmap)."""
    arr = np.load(path, mmap_mode="r")
    return np.asarray(arr) if arr.size else np.load(path)  # an empty file cannot be mapped


def cache_key(reader: Reader, min_count: int, seed: int, split: Sequence[float]) -> str:
    blob = json.dumps([CACHE_FORMAT, reader.fingerprint(), min_count, seed, [float(s) for s in split]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def assign_split(rng: np.random.Generator, n: int, split: Sequence[float]) -> np.ndarray:
    """Split code of the next n rows. One uniform per row from a single stream, so the
    result depends on the row order only, not on how rows are chunked."""
    u = rng.random(n)
    edges = np.cumsum(split)[:-1] / sum(split)
    return (u >= edges[0]).astype(np.uint8) + (u >= edges[1])


def build_or_load(
    reader: Reader,
    cache_root: str | Path,
    *,
    min_count: int,
    seed: int,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    log: Log = print,
    chunk_rows: int = CHUNK_ROWS,
) -> CachedDataset:
    """The cached dataset of `reader`, built on first use.

    Args:
        reader: the source.
        cache_root: directory holding caches (created if needed).
        min_count: tokens with fewer train occurrences map to the OOV id 0.
        seed: seed of the random train/val/test assignment.
        split: train/val/test proportions.
        log: progress messages.
        chunk_rows: rows per streamed chunk (bounds memory while building).
    """
    if len(split) != 3 or min(split) < 0 or not sum(split) > 0:
        raise ValueError(f"split must be 3 non-negative proportions, got {split}")
    key = cache_key(reader, min_count, seed, split)
    final = Path(cache_root) / f"{reader.dataset_id}-{key}"
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        _build(reader, final, min_count=min_count, seed=seed, split=split, log=log, chunk_rows=chunk_rows)
    else:
        log(f"data: reusing cache {final}")
    ds = CachedDataset.load(final)
    if ds.spec.dataset != reader.dataset_id or ds.meta["fingerprint"] != reader.fingerprint():
        raise DataError(str(final), None, "cache does not belong to this source (delete the directory to rebuild)")
    rows = ds.meta["rows"]
    log(
        f"data: {reader.dataset_id}: {ds.n_rows:,} rows (train {rows['train']:,} / val {rows['val']:,} / "
        f"test {rows['test']:,}), {len(ds.spec.fields)} fields, bad lines skipped {ds.meta['bad_lines']}"
    )
    return ds


def _build(reader: Reader, final: Path, *, min_count: int, seed: int, split, log: Log, chunk_rows: int) -> None:
    start = time.perf_counter()
    fingerprint = reader.fingerprint()
    decls = reader.fields()
    vocabs = {d.name: vocab_for(d) for d in decls}
    log(f"data: building cache {final} (pass 1: counting train tokens)")
    rng = np.random.default_rng(seed)
    n, per_split, positives, has_groups = 0, np.zeros(3, np.int64), np.zeros(3), None
    for chunk in reader.iter_chunks(chunk_rows):
        has_groups = _check(chunk, decls, has_groups, reader)
        codes = assign_split(rng, len(chunk), split)
        train = codes == 0
        per_split += np.bincount(codes, minlength=3)
        positives += np.bincount(codes, weights=chunk.labels, minlength=3)
        for d in decls:
            col = chunk.columns[d.name]
            vocabs[d.name].count(_floats(col, d, reader) if d.kind == "numerical" else col, train)
        n += len(chunk)
    if n == 0:
        raise DataError(reader.dataset_id, None, "the source has no rows")
    bad_lines, bad_examples = reader.bad_lines, list(getattr(reader, "bad_examples", []))
    try:
        spec = FeatureSpec(
            reader.dataset_id, reader.label, tuple(vocabs[d.name].build(min_count) for d in decls), min_count
        )
    except FeatureSpecError as e:
        raise DataError(reader.dataset_id, None, str(e)) from None
    pass1 = time.perf_counter() - start
    log(f"data: pass 1: {n:,} rows in {pass1:.1f}s; {bad_lines} bad lines skipped")
    for example in bad_examples:
        log(f"data:   skipped {example}")
    log("data: pass 2: encoding " + ", ".join(f"{f.name} ({f.num_embeddings:,} ids)" for f in spec.fields))

    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _encode(
            reader,
            tmp,
            spec,
            decls,
            vocabs,
            n=n,
            has_groups=bool(has_groups),
            seed=seed,
            split=split,
            chunk_rows=chunk_rows,
        )
        if reader.fingerprint() != fingerprint:
            raise DataError(reader.dataset_id, None, CHANGED)
        spec.save(str(tmp / "spec.json"))
        for d in decls:
            np.save(tmp / f"c_{d.name}.npy", vocabs[d.name].id_counts)
        meta = {
            "format": CACHE_FORMAT,
            "dataset": reader.dataset_id,
            "fingerprint": fingerprint,
            "min_count": min_count,
            "seed": seed,
            "split": [float(s) for s in split],
            "n_rows": n,
            "rows": dict(zip(SPLITS, per_split.tolist())),
            "positive_rate": dict(zip(SPLITS, (positives / np.maximum(per_split, 1)).round(6).tolist())),
            "bad_lines": bad_lines,
            "bad_examples": bad_examples,
            "numerical": {f.name: str(f.encoding) for f in spec.fields if f.kind == "numerical"},
            # the structure a synthetic generator planted (groups, interactions), for scoring a search against
            "planted": reader.planted() if hasattr(reader, "planted") else None,
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not the "someone else finished first" case
                raise
            log(f"data: another process built {final} first; using it")
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"data: cache ready in {time.perf_counter() - start:.1f}s (pass 1 {pass1:.1f}s)")


def _encode(
    reader, tmp: Path, spec: FeatureSpec, decls: list[FieldDecl], vocabs, *, n, has_groups, seed, split, chunk_rows
) -> None:
    """Pass 2: the same rows again, encoded into memmaps under `tmp`."""
    maps = []

    def mm(name: str, dtype, shape):
        if 0 in shape:  # an empty file cannot be mapped: write it now, nothing will go in
            np.save(tmp / name, np.zeros(shape, dtype))
            return np.zeros(shape, dtype)
        maps.append(np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dtype, shape=shape))
        return maps[-1]

    numerical = [d.name for d in decls if d.kind == "numerical"]
    labels, codes = mm("labels.npy", np.float32, (n,)), mm("split.npy", np.uint8, (n,))
    groups = mm("groups.npy", np.int32, (n,)) if has_groups else None
    dense = mm("dense.npy", np.float32, (n, len(numerical)))
    out, bag_pos = {}, {}
    for f in spec.fields:
        dt = id_dtype(f.num_embeddings)
        if f.kind == "bag":
            offsets = mm(f"f_{f.name}.offsets.npy", np.int64, (n + 1,))
            offsets[0] = 0
            out[f.name] = (offsets, mm(f"f_{f.name}.values.npy", dt, (vocabs[f.name].values,)))
            bag_pos[f.name] = 0
        else:
            out[f.name] = mm(f"f_{f.name}.npy", dt, (n,))
    rng = np.random.default_rng(seed)
    pos = 0
    for chunk in reader.iter_chunks(chunk_rows):
        m = len(chunk)
        if pos + m > n:
            raise DataError(reader.dataset_id, None, CHANGED)
        rows = slice(pos, pos + m)
        labels[rows] = chunk.labels
        codes[rows] = assign_split(rng, m, split)
        if groups is not None:
            groups[rows] = chunk.groups
        for d in decls:
            col, voc = chunk.columns[d.name], vocabs[d.name]
            if d.kind == "bag":
                lengths, values = voc.encode_bag(col)
                offsets, flat = out[d.name]
                start = bag_pos[d.name]
                if start + len(values) > len(flat):
                    raise DataError(reader.dataset_id, None, CHANGED)
                offsets[pos + 1 : pos + m + 1] = start + np.cumsum(lengths)
                flat[start : start + len(values)] = values
                bag_pos[d.name] = start + len(values)
            elif d.kind == "numerical":
                x = _floats(col, d, reader)
                out[d.name][rows] = voc.encode(x)
                dense[rows, numerical.index(d.name)] = dense_column(x, voc.encoding)
            else:
                out[d.name][rows] = voc.encode(col)
        pos += m
    if pos != n:
        raise DataError(reader.dataset_id, None, f"{CHANGED} (pass 1 saw {n:,} rows, pass 2 {pos:,})")
    for arr in maps:
        arr.flush()


def _floats(col, decl: FieldDecl, reader: Reader) -> np.ndarray:
    try:
        return as_float(col)
    except ValueError as e:
        raise DataError(
            reader.dataset_id, None, f"field {decl.name!r}: {e} (the reader should have caught this)"
        ) from None


def _check(chunk: RawChunk, decls: list[FieldDecl], has_groups: bool | None, reader: Reader) -> bool:
    """Reader contract checks that are cheap per chunk; returns whether groups are present."""
    missing = [d.name for d in decls if d.name not in chunk.columns]
    if missing:
        raise DataError(reader.dataset_id, None, f"reader chunk lacks field(s) {missing}")
    ragged = [d.name for d in decls if len(chunk.columns[d.name]) != len(chunk)]
    if ragged:
        raise DataError(reader.dataset_id, None, f"reader chunk: field(s) {ragged} do not have one value per label")
    here = chunk.groups is not None
    if has_groups is not None and here != has_groups:
        raise DataError(reader.dataset_id, None, "reader emits groups for some chunks only")
    return here
