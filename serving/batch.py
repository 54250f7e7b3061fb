"""FeatureBatch: encoded rows in spec order, and the model-input contract built from them.

Every CTR model, cluster model and router takes `(dense, sparse)`:
  dense   float32 [B, n_numerical], the numerical values as dense inputs (`numerical_dense`:
          log-scaled, or standardised for fields encoded "raw" / "autodis"; NaN marks a
          missing "autodis" value) in `spec.numerical` order;
  sparse  a KeyedJaggedTensor whose keys are all spec fields in spec order, int64 values,
          int32 lengths (1 per row for categorical and numerical fields, the bag size for
          bags) and no weights or offsets.
This is what the trainer's batches hold and what `serving.bundle` exports models with; an
exported program checks the structure of its inputs, so both sides build them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from serving.encodings import Encoding
from serving.features import FeatureSpec

VALUES_DTYPE = np.int64
LENGTHS_DTYPE = np.int32


def signed_log(x: np.ndarray) -> np.ndarray:
    """sign(x)·ln(1 + |x|): what an "autodis" field standardises (heavy-tailed counts would
    otherwise leave nearly every standardised value in a sliver around the mean)."""
    return np.sign(x) * np.log1p(np.abs(x))


def dense_column(x: np.ndarray, encoding: Encoding) -> np.ndarray:
    """One numerical field's dense input as float32, NaN (missing) → 0: (x - mean) / std
    for a "raw" field, else log(1 + max(x, 0)); for an "autodis" field (signed_log(x) -
    mean) / std with missing kept as NaN, which the model maps to its missing embedding.

    The trainer's cache builder calls this very function on its float64 columns, so a
    served row sees the same float32 as training did.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    if encoding.name == "autodis":
        return ((signed_log(x) - encoding.mean) / encoding.std).astype(np.float32)
    if encoding.name == "raw":
        # missing → 0 after standardising: the train mean, which the token marks as missing
        return np.nan_to_num((x - encoding.mean) / encoding.std, nan=0.0).astype(np.float32)
    return np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0)).astype(np.float32)


def numerical_dense(x: np.ndarray, encodings: Sequence[Encoding]) -> np.ndarray:
    """float64 [B, n_numerical] raw values (NaN = missing) → the float32 dense input, one
    `dense_column` per field (`encodings` in `spec.numerical` order)."""
    out = np.empty(x.shape, dtype=np.float32)
    for j, encoding in enumerate(encodings):
        out[:, j] = dense_column(x[:, j], encoding)
    return out


@dataclass(frozen=True)
class FeatureBatch:
    """Encoded, validated rows; numpy until the model call, so splitting by cluster is cheap.

    Args:
        dense: float32 [B, n_numerical] model dense input (see module docstring).
        ids: one int64 array per spec field, in spec order: one id per row for
            categorical and numerical fields, the concatenated bags for bag fields.
        lengths: one int32 [B] array of bag sizes per spec field; None for single-valued
            fields (their length is 1 for every row).
    """

    dense: np.ndarray
    ids: tuple[np.ndarray, ...]
    lengths: tuple[np.ndarray | None, ...]

    @property
    def num_rows(self) -> int:
        return int(self.dense.shape[0])

    def take(self, rows: np.ndarray) -> "FeatureBatch":
        """The batch of the given row indices, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        ids, lengths = [], []
        for values, lens in zip(self.ids, self.lengths):
            if lens is None:
                ids.append(values[rows])
                lengths.append(None)
                continue
            starts = np.concatenate(([0], np.cumsum(lens, dtype=np.int64)[:-1]))[rows]
            new_lens = lens[rows]
            total = int(new_lens.sum())
            # position of each kept value = its bag's old start + its rank inside the bag
            new_starts = np.cumsum(new_lens, dtype=np.int64) - new_lens
            pos = np.repeat(starts - new_starts, new_lens) + np.arange(total, dtype=np.int64)
            ids.append(values[pos])
            lengths.append(new_lens)
        return FeatureBatch(np.ascontiguousarray(self.dense[rows]), tuple(ids), tuple(lengths))

    @classmethod
    def concat(cls, batches: "list[FeatureBatch]") -> "FeatureBatch":
        """The rows of `batches` one after another (all encoded against one spec)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        ids = tuple(np.concatenate([b.ids[j] for b in batches]) for j in range(len(first.ids)))
        lengths = tuple(
            None if first.lengths[j] is None else np.concatenate([b.lengths[j] for b in batches]) for j in range(len(first.lengths))
        )
        return cls(np.concatenate([b.dense for b in batches]), ids, lengths)

    def check(self) -> None:
        """Raises ValueError unless the arrays agree: per field one id per row, or
        non-negative bag lengths (one per row) summing to the number of ids; dense rows
        = batch rows. Exported programs run without torch's own input check (see
        `serving.bundle`), so this is what stands between a bug and FBGEMM reading past
        the values."""
        n = self.num_rows
        if self.dense.ndim != 2 or len(self.ids) != len(self.lengths):
            raise ValueError(f"malformed batch: dense {self.dense.shape}, {len(self.ids)} id arrays, {len(self.lengths)} length arrays")
        for j, (ids, lens) in enumerate(zip(self.ids, self.lengths)):
            if ids.ndim != 1:
                raise ValueError(f"field #{j}: ids of shape {ids.shape}")
            if lens is None:
                if len(ids) != n:
                    raise ValueError(f"field #{j}: {len(ids)} ids for {n} rows")
            elif lens.shape != (n,) or (n and lens.min() < 0) or int(lens.sum()) != len(ids):
                raise ValueError(f"field #{j}: bag lengths {lens.shape} summing to {int(lens.sum())} for {len(ids)} ids and {n} rows")

    def to_inputs(self, keys: list[str]) -> tuple[torch.Tensor, KeyedJaggedTensor]:
        """(dense, sparse) model inputs; `keys` are the spec's field names in order.
        Raises ValueError when the arrays disagree (see `check`)."""
        self.check()
        if len(keys) != len(self.ids):
            raise ValueError(f"{len(keys)} keys for {len(self.ids)} fields")
        n = self.num_rows
        ones = np.ones(n, dtype=LENGTHS_DTYPE)
        all_lengths = [ones if lens is None else lens for lens in self.lengths]
        per_key = [len(v) for v in self.ids]
        values = np.concatenate(self.ids).astype(VALUES_DTYPE, copy=False) if self.ids else np.zeros(0, VALUES_DTYPE)
        lengths = np.concatenate(all_lengths).astype(LENGTHS_DTYPE, copy=False) if self.ids else np.zeros(0, LENGTHS_DTYPE)
        kjt = KeyedJaggedTensor(
            keys=list(keys),
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths),
            stride=n,
            # known here for free; saves eager models a device sync (exported ones recompute it)
            length_per_key=per_key,
            offset_per_key=[0, *np.cumsum(per_key).tolist()],
        )
        return torch.from_numpy(np.ascontiguousarray(self.dense, dtype=np.float32)), kjt

    @classmethod
    def from_inputs(cls, spec: FeatureSpec, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> "FeatureBatch":
        """Model inputs → FeatureBatch (checks keys and sizes; ids are not range-checked).

        Raises ValueError naming what does not match the spec.
        """
        if list(sparse.keys()) != spec.names:
            raise ValueError(f"KJT keys {list(sparse.keys())} != spec fields in order {spec.names}")
        if sparse.weights_or_none() is not None:
            raise ValueError("KJT has weights; models take unweighted features")
        n = int(sparse.stride())
        if dense.dim() != 2 or tuple(dense.shape) != (n, len(spec.numerical)):
            raise ValueError(f"dense has shape {tuple(dense.shape)}, expected ({n}, {len(spec.numerical)})")
        ids, lengths = [], []
        for f, jt in zip(spec.fields, sparse.split([1] * len(spec.fields))):
            lens = jt.lengths().numpy().astype(LENGTHS_DTYPE)
            values = jt.values().numpy().astype(VALUES_DTYPE)
            if f.kind == "bag":
                lengths.append(lens)
            elif not (lens == 1).all():
                raise ValueError(f"field {f.name!r} ({f.kind}) has lengths other than 1")
            else:
                lengths.append(None)
            ids.append(values)
        return cls(dense.detach().numpy().astype(np.float32), tuple(ids), tuple(lengths))
