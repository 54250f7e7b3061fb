"""embstack.v1 messages ↔ the transport-free predictor types. The only module that knows
both the generated protobuf classes and the Predictor."""

from __future__ import annotations

import json

import numpy as np

from serving._proto.embstack.v1 import inference_pb2 as pb
from serving.batch import FeatureBatch
from serving.bundle import SCHEMA_VERSION, Bundle
from serving.encode import Column, Tag
from serving.errors import InvalidRequest
from serving.predictor import Prediction, Predictor

_TAGS = {"token": Tag.TOKEN, "id": Tag.ID, "number": Tag.NUMBER, "tokens": Tag.TOKENS, "ids": Tag.IDS}
_LISTS = (Tag.TOKENS, Tag.IDS)


def decode(predictor: Predictor, request: pb.ScoreRequest) -> FeatureBatch:
    """Decodes and validates one Score request against the predictor's feature spec.
    Raises InvalidRequest naming row and field."""
    has_rows, has_columns = len(request.rows) > 0, request.HasField("columns")
    if has_rows and has_columns:
        raise InvalidRequest("set either rows or columns, not both")
    if has_columns:
        batch = request.columns
        if len(batch.columns) != len({c.field for c in batch.columns}):
            seen, dup = set(), None
            for c in batch.columns:
                dup = c.field if c.field in seen else dup
                seen.add(c.field)
            raise InvalidRequest(f"column for field {dup!r} given more than once", field=dup)
        # Checked before decoding so an oversized batch costs no per-column work.
        predictor.encoder.check_num_rows(batch.num_rows)
        columns = {c.field: _column(c) for c in batch.columns}
        return predictor.encoder.encode_columns(batch.num_rows, columns)
    # Checked before decoding so an oversized batch costs no per-row work.
    predictor.encoder.check_num_rows(len(request.rows))
    return predictor.encoder.encode_rows([_row(r, i) for i, r in enumerate(request.rows)], tagged=True)


def claimed_rows(request: pb.ScoreRequest) -> int:
    """Rows a Score request says it carries, read without decoding (what admission weighs)."""
    return request.columns.num_rows if request.HasField("columns") else len(request.rows)


def score(predictor: Predictor, request: pb.ScoreRequest) -> pb.ScoreResponse:
    """Decodes, scores and encodes one Score call without batching (offline use, tests).
    Raises InvalidRequest on bad input."""
    return response(predictor.predict(decode(predictor, request)))


def response(pred: Prediction) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        probabilities=pred.probabilities.tolist(),
        clusters=pred.clusters.astype(np.int32).tolist(),
        bundle_version=pred.version,
    )


def _row(row: pb.Row, i: int) -> dict:
    out = {}
    for name, value in row.fields.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidRequest("value has none of token / id / number / tokens / ids set", row=i, field=name)
        tag = _TAGS[kind]
        payload = getattr(value, kind)
        out[name] = (tag, list(payload.values) if tag in _LISTS else payload)
    return out


def _column(c: pb.Column) -> Column:
    kind = c.WhichOneof("data")
    lengths = np.asarray(c.lengths, dtype=np.int64) if len(c.lengths) else None
    if kind == "ids":
        return Column(ids=np.asarray(c.ids.values, dtype=np.int64), lengths=lengths)
    if kind == "tokens":
        return Column(tokens=list(c.tokens.values), lengths=lengths)
    if kind == "numbers":
        return Column(numbers=np.asarray(c.numbers.values, dtype=np.float64), lengths=lengths)
    raise InvalidRequest("column has none of ids / tokens / numbers set", field=c.field)


def model_info(bundle: Bundle, max_batch_rows: int) -> pb.ModelInfo:
    spec, m = bundle.spec, bundle.manifest
    return pb.ModelInfo(
        bundle_version=bundle.version,
        dataset=m.dataset,
        schema_version=SCHEMA_VERSION,
        created=m.created,
        fields=[pb.FieldInfo(name=f.name, kind=f.kind, num_embeddings=f.num_embeddings, vocab_size=len(f.vocab)) for f in spec.fields],
        clusters=[pb.ClusterInfo(id=k, dims=c.dims) for k, c in enumerate(m.clusters)],
        has_router=m.router is not None,
        max_batch_rows=max_batch_rows,
        metrics_json=json.dumps(m.metrics, sort_keys=True),
        quantization=m.quantization,
    )
