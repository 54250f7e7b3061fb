"""Criteo-shaped synthetic data with planted instance heterogeneity (the case iHAS targets).

The generating model (all drawn from the seed):
  * categorical field f has a vocabulary of V_f ids, V_f log-uniform in [vocab_min,
    vocab_max]; a row's id is a bounded Zipf(zipf_a) draw over 1..V_f (id 0 is never
    drawn: it stays the OOV id). Fields are pre-coded (FieldDecl.num_ids = V_f + 1), so
    the cache takes the integer fast path and no string is ever built.
  * each row belongs to one of `n_groups` latent sub-populations (uniform). Group g owns
    `signal_fields_per_group` fields S_g (disjoint across groups). For a row of group g,
    click logit = BASE_LOGIT + sum over f in S_g of effect_f[id_f], effect_f ~ N(0,
    SIGNAL_STD^2 / |S_g|) per id; the label is a Bernoulli draw of sigmoid(logit). The
    fields of other groups carry no signal for it: for that row they are pure noise.
  * a row of group g draws the ids of its own signal fields through a group-specific
    permutation of the vocabulary, so its group is recoverable from the features — but
    only through the signal fields (there is no marker field); other groups draw those
    fields from the shared, unpermuted Zipf, so the same id can mean "strong signal" for
    one group and "noise" for another.
  * numerical fields are heavy-tailed non-negative counts with a per-field missing rate;
    by default they carry no signal. With `numerical_signal` = s > 0 (off by default, so
    the data of every config without it is unchanged), each row's logit also gets
    Σ_i a·sin(ω_i·ln(1 + x_i) + φ_i) over the numerical fields (a missing value adds its
    field's constant c_i instead), a = s·sqrt(2 / n_numerical), ω_i ~ U(1, 3), φ_i ~
    U(0, 2π), c_i ~ N(0, a²/2), all drawn from the seed on a stream of their own: a
    smooth, non-monotone function of the value that a model must discretize well to use.
  * planted interactions (off by default): `interactions_2` field pairs and
    `interactions_3` field triples, distinct tuples of categorical fields drawn from the
    seed. Each field of a tuple gets its own factor u[id] ~ N(0, 1) per id, and every row
    adds INTERACTION_STD / sqrt(#tuples) · Π u_f[id_f] to its logit: a signal no sum of
    per-field effects can express, and exactly what a product of embeddings can. The
    tuples are recorded (`planted()`) so a search can be scored against them.
    With `interaction_rank` r > 1 each factor is an r-vector u[id] ~ N(0, I) and a tuple
    adds the same scale · Σ_k Π_f u_f[id_f, k] / sqrt(r): a pair is then an inner product
    of rank r, which only an embedding of at least r dims per field can express.
    With `pure_interactions` (off by default) every factor is standardised on its field's
    id distribution (zero mean, unit variance over the Zipf, or group mixture, of ids that
    field draws): a planted tuple then adds nothing, on average, to the logit of any
    smaller set of its fields (its pairs carry no pair signal, its fields no main effect:
    exactly so when the fields are independent, n_groups = 1). Without it a factor's mean
    under the skewed ids is far from 0, so a triple's pairs and a pair's fields carry real
    lower-order signal of their own.
Rows are generated in fixed blocks of BLOCK rows, each from its own seeded stream, so the
data does not depend on the chunk size asked for. Same seed → byte-identical arrays on a
given machine (float32 log/exp could in principle round differently on another CPU).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from trainer.data.readers.base import FieldDecl, RawChunk

GENERATOR_VERSION = 1
BLOCK = 1 << 15
SIGNAL_STD = 1.5  # total std of a row's signal logit: oracle AUC ≈ 0.8, like real CTR data
BASE_LOGIT = -1.6  # with the signal spread, mean CTR ≈ 0.25
INTERACTION_STD = 1.5  # total std of the planted interactions' logit (same scale as the field signal)


@dataclass(frozen=True)
class SyntheticParams:
    """Shape of the generated data.

    Args:
        rows: number of rows.
        n_categorical: categorical fields C1..Cn.
        n_numerical: numerical fields I1..Im.
        vocab_min: smallest vocabulary size.
        vocab_max: largest vocabulary size (<= 2**24: ids are computed in float32).
        zipf_a: Zipf exponent of the id distribution (> 0).
        n_groups: planted sub-populations.
        signal_fields_per_group: fields whose ids drive the clicks of each group.
        interactions_2: planted field pairs (0 = none).
        interactions_3: planted field triples (0 = none).
        seed: everything is derived from it.
        numerical_signal: s, the std scale of the logit the numerical fields add (0 = none).
        pure_interactions: planted factors standardised on their field's id distribution,
            so a planted tuple carries no lower-order signal.
        interaction_rank: r, the width of every planted factor (1 = scalar factors).
    """

    rows: int = 100_000
    n_categorical: int = 26
    n_numerical: int = 13
    vocab_min: int = 10
    vocab_max: int = 100_000
    zipf_a: float = 1.2
    n_groups: int = 2
    signal_fields_per_group: int = 4
    interactions_2: int = 0
    interactions_3: int = 0
    seed: int = 0
    numerical_signal: float = 0.0
    pure_interactions: bool = False
    interaction_rank: int = 1

    # Ids are computed in float32, which holds every integer up to 2**24 exactly.
    MAX_VOCAB = 2**24

    def problems(self) -> list[str]:
        """Every inconsistency, as (key, message) strings without a section prefix."""
        p = []
        if self.rows <= 0:
            p.append(f"rows: must be > 0, got {self.rows}")
        if self.n_categorical < 1 or self.n_numerical < 0:
            p.append(f"n_categorical >= 1 and n_numerical >= 0 needed, got {self.n_categorical}, {self.n_numerical}")
        if not 1 <= self.vocab_min <= self.vocab_max <= self.MAX_VOCAB:
            p.append(
                "vocab_min/vocab_max: need 1 <= vocab_min <= vocab_max <= 2**24, "
                f"got {self.vocab_min}, {self.vocab_max}"
            )
        if not self.numerical_signal >= 0:
            p.append(f"numerical_signal: must be >= 0, got {self.numerical_signal}")
        if not self.zipf_a > 0:
            p.append(f"zipf_a: must be > 0, got {self.zipf_a}")
        if self.n_groups < 1 or self.signal_fields_per_group < 1:
            p.append(
                "n_groups and signal_fields_per_group must be >= 1, "
                f"got {self.n_groups}, {self.signal_fields_per_group}"
            )
        elif self.n_groups * self.signal_fields_per_group > self.n_categorical:
            p.append(
                f"signal_fields_per_group: n_groups * signal_fields_per_group = "
                f"{self.n_groups * self.signal_fields_per_group} exceeds n_categorical = {self.n_categorical}"
            )
        for order in (2, 3):
            n = getattr(self, f"interactions_{order}")
            if n < 0 or n > math.comb(self.n_categorical, order):
                p.append(f"interactions_{order}: need 0 <= n <= C(n_categorical, {order}) = "
                         f"{math.comb(self.n_categorical, order)}, got {n}")
        if self.interaction_rank < 1:
            p.append(f"interaction_rank: must be >= 1, got {self.interaction_rank}")
        return p


def _zipf_ids(u: np.ndarray, vocab: int, a: float) -> np.ndarray:
    """Bounded Zipf ids in [1, vocab] from float32 uniforms: the inverse CDF of a power law
    on [1, vocab + 1), floored. Overwrites `u` (in-place float32 ufuncs keep this fast;
    log1p would be 6x slower and only changes which u round to id 1)."""
    if abs(a - 1.0) < 1e-9:
        u *= np.float32(np.log(vocab + 1.0))
    else:
        u *= np.float32((vocab + 1.0) ** (1.0 - a) - 1.0)
        u += np.float32(1.0)
        np.log(u, out=u)
        u *= np.float32(1.0 / (1.0 - a))
    np.exp(u, out=u)
    return np.minimum(u.astype(np.int32), vocab)


def _counts(u: np.ndarray, alpha: float, top: float, missing: float) -> np.ndarray:
    """Pareto(alpha) counts floor(u^(-1/alpha)) - 1 capped at `top`; u > 1 - missing is
    missing (NaN). Overwrites `u`."""
    gone = u > np.float32(1.0 - missing)
    with np.errstate(divide="ignore"):
        np.log(u, out=u)
    u *= np.float32(-1.0 / alpha)
    np.exp(u, out=u)
    np.minimum(u, np.float32(top), out=u)
    np.floor(u, out=u)
    u -= np.float32(1.0)
    np.copyto(u, np.float32(np.nan), where=gone)
    return u


class SyntheticReader:
    """Generates the rows; see the module docstring for the model.

    Args:
        params: the data's shape and seed.
        threads: blocks generated in parallel (the data does not depend on it);
            default: min(4, CPU count).

    Attributes:
        vocab_sizes: V_f of each categorical field (ids are in [1, V_f]).
        signal_fields: for each group, the names of its signal fields.
    """

    dataset_id = "synthetic"
    label = "label"
    bad_lines = 0
    bad_examples: tuple[str, ...] = ()

    def __init__(self, params: SyntheticParams, threads: int | None = None):
        self.threads = threads if threads is not None else min(4, os.cpu_count() or 1)
        problems = params.problems()
        if problems:
            raise ValueError(f"synthetic params: {'; '.join(problems)}")
        self.params = p = params
        rng = np.random.default_rng([p.seed, 0])
        lo, hi = np.log(p.vocab_min), np.log(p.vocab_max)
        self.vocab_sizes = [int(round(v)) for v in np.exp(rng.uniform(lo, hi, p.n_categorical))]
        order = rng.permutation(p.n_categorical)
        k = p.signal_fields_per_group
        self._owner = np.full(p.n_categorical, -1)  # group whose signal field this is
        for g in range(p.n_groups):
            self._owner[order[g * k : (g + 1) * k]] = g
        self.signal_fields = [[f"C{i + 1}" for i in sorted(order[g * k : (g + 1) * k])] for g in range(p.n_groups)]
        self._perm, self._effect = {}, {}
        for i in np.flatnonzero(self._owner >= 0):
            v = self.vocab_sizes[i]
            self._perm[i] = np.concatenate([[0], 1 + rng.permutation(v)]).astype(np.int32)
            self._effect[i] = rng.normal(0.0, SIGNAL_STD / np.sqrt(k), v + 1).astype(np.float32)
        # Numerical fields: heavy-tailed counts with their own range and missing rate.
        self._num_max = [float(x) for x in np.exp(rng.uniform(np.log(10), np.log(1e5), p.n_numerical))]
        self._num_a = [float(x) for x in rng.uniform(0.8, 1.8, p.n_numerical)]
        self._num_missing = [float(x) for x in rng.uniform(0.0, 0.3, p.n_numerical)]
        # drawn on a stream of their own, so the draws above (and the data without it) stay as they were
        num_rng = np.random.default_rng([p.seed, 2])
        self._num_amp = p.numerical_signal * np.sqrt(2.0 / max(p.n_numerical, 1))
        self._num_freq = num_rng.uniform(1.0, 3.0, p.n_numerical)
        self._num_phase = num_rng.uniform(0.0, 2 * np.pi, p.n_numerical)
        self._num_if_missing = num_rng.normal(0.0, self._num_amp / np.sqrt(2.0), p.n_numerical)
        self.interactions, self._factors = self._plant_interactions()

    def _plant_interactions(self) -> tuple[list[list[str]], list[list[np.ndarray]]]:
        """The planted tuples and one factor table per (tuple, field), from their own
        stream so that data without interactions is unchanged."""
        p = self.params
        rng = np.random.default_rng([p.seed, 3])
        tuples: list[tuple[int, ...]] = []
        for order in (2, 3):
            pool = list(itertools.combinations(range(p.n_categorical), order))
            picks = rng.choice(len(pool), size=getattr(p, f"interactions_{order}"), replace=False)
            tuples += [pool[i] for i in sorted(picks)]
        shape = (lambda v: v + 1) if p.interaction_rank == 1 else (lambda v: (v + 1, p.interaction_rank))
        factors = [[rng.normal(0.0, 1.0, shape(self.vocab_sizes[i])) for i in t] for t in tuples]
        if p.pure_interactions:
            for t, fs in zip(tuples, factors):
                for i, u_f in zip(t, fs):
                    q = self.id_distribution(i)
                    u_f -= q @ u_f  # per column when r > 1
                    u_f /= np.sqrt(q @ u_f**2)
        factors = [[u_f.astype(np.float32) for u_f in fs] for fs in factors]
        return [[f"C{i + 1}" for i in t] for t in tuples], factors

    def id_distribution(self, i: int) -> np.ndarray:
        """P(id = k) of categorical field i, k = 0..V_i (id 0 never drawn): the floored power
        law `_zipf_ids` inverts, through the group permutation for the rows of the group
        owning the field (a share 1 / n_groups of the rows)."""
        v, a = self.vocab_sizes[i], self.params.zipf_a
        edges = np.arange(1, v + 2, dtype=np.float64)
        cdf = np.log(edges) / np.log(v + 1.0) if abs(a - 1.0) < 1e-9 else (edges ** (1 - a) - 1) / ((v + 1.0) ** (1 - a) - 1)
        q = np.concatenate([[0.0], np.diff(cdf)])
        if self._owner[i] < 0:
            return q
        member = 1.0 / self.params.n_groups
        permuted = np.zeros_like(q)
        permuted[self._perm[i]] = q
        return member * permuted + (1 - member) * q

    def planted(self) -> dict:
        """The planted structure a search can be scored against."""
        return {"groups": self.signal_fields, "interactions": self.interactions}

    def fields(self) -> list[FieldDecl]:
        cats = [FieldDecl(f"C{i + 1}", "categorical", num_ids=v + 1) for i, v in enumerate(self.vocab_sizes)]
        return [FieldDecl(f"I{i + 1}", "numerical") for i in range(self.params.n_numerical)] + cats

    def fingerprint(self) -> str:
        # options at their default (off) are left out: data without them keeps its fingerprint (and cache)
        params = {k: v for k, v in asdict(self.params).items()
                  if not ((k.startswith("interactions_") or k in ("numerical_signal", "pure_interactions")) and not v)
                  and not (k == "interaction_rank" and v == 1)}
        return f"synthetic|v{GENERATOR_VERSION}|{json.dumps(params, sort_keys=True)}"

    def numerical_effect(self, i: int, x: np.ndarray) -> np.ndarray:
        """Logit added by numerical field i at raw values x (float32, NaN = missing)."""
        effect = self._num_amp * np.sin(self._num_freq[i] * np.log1p(np.nan_to_num(x, nan=0.0)) + self._num_phase[i])
        return np.where(np.isnan(x), self._num_if_missing[i], effect).astype(np.float32)

    def block(self, b: int) -> RawChunk:
        """Rows [b * BLOCK, min((b + 1) * BLOCK, rows)), always the same for a given seed."""
        p = self.params
        n = min(BLOCK, p.rows - b * BLOCK)
        # One uniform draw per value, all at once: row 0 groups, 1 labels, then each field.
        u = np.random.default_rng([p.seed, 1, b]).random((2 + p.n_numerical + p.n_categorical, n), dtype=np.float32)
        groups = (u[0] * np.float32(p.n_groups)).astype(np.int32)
        member = [groups == g for g in range(p.n_groups)]
        logit = np.full(n, BASE_LOGIT, dtype=np.float32)
        columns: dict[str, np.ndarray] = {}
        for i in range(p.n_numerical):
            columns[f"I{i + 1}"] = _counts(u[2 + i], self._num_a[i], self._num_max[i], self._num_missing[i])
            if p.numerical_signal:
                logit += self.numerical_effect(i, columns[f"I{i + 1}"])
        for i, v in enumerate(self.vocab_sizes):
            ids = _zipf_ids(u[2 + p.n_numerical + i], v, p.zipf_a)
            g = self._owner[i]
            if g >= 0:
                np.copyto(ids, np.take(self._perm[i], ids), where=member[g])
                np.add(logit, np.take(self._effect[i], ids), out=logit, where=member[g])
            columns[f"C{i + 1}"] = ids
        if self.interactions:
            scale = np.float32(INTERACTION_STD / np.sqrt(len(self.interactions)))
            r = p.interaction_rank
            for names, factors in zip(self.interactions, self._factors):
                term = np.full((n, r) if r > 1 else n, scale / np.float32(np.sqrt(r)), dtype=np.float32)
                for name, u_f in zip(names, factors):
                    term *= np.take(u_f, columns[name], axis=0)
                logit += term.sum(axis=1) if r > 1 else term
        labels = (u[1] < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return RawChunk(labels, columns, groups)

    def iter_chunks(self, chunk_rows: int) -> Iterator[RawChunk]:
        yield from _rechunk(self._blocks(), chunk_rows)

    def _blocks(self) -> Iterator[RawChunk]:
        """Blocks in order; with threads > 1 a few are generated ahead in parallel (numpy
        releases the GIL), keeping memory bounded to ~2 blocks per thread."""
        n_blocks = -(-self.params.rows // BLOCK)
        if self.threads <= 1:
            yield from map(self.block, range(n_blocks))
            return
        with ThreadPoolExecutor(self.threads) as pool:
            ahead: deque = deque()
            for b in range(n_blocks):
                ahead.append(pool.submit(self.block, b))
                if len(ahead) > 2 * self.threads:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()


def _concat(chunks: list[RawChunk]) -> RawChunk:
    if len(chunks) == 1:
        return chunks[0]
    cols = {k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns}
    return RawChunk(np.concatenate([c.labels for c in chunks]), cols, np.concatenate([c.groups for c in chunks]))


def _slice(chunk: RawChunk, s: slice) -> RawChunk:
    return RawChunk(chunk.labels[s], {k: v[s] for k, v in chunk.columns.items()}, chunk.groups[s])


def _rechunk(blocks: Iterator[RawChunk], chunk_rows: int) -> Iterator[RawChunk]:
    """The rows of `blocks` regrouped into chunks of exactly chunk_rows (the last: fewer)."""
    pending: list[RawChunk] = []
    have = 0
    for blk in blocks:
        pending.append(blk)
        have += len(blk)
        while have >= chunk_rows:
            merged = _concat(pending)
            yield _slice(merged, slice(0, chunk_rows))
            rest = _slice(merged, slice(chunk_rows, None))
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield _concat(pending)
