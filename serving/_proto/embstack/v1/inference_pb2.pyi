from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class IdList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class NumberList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("token", "id", "number", "tokens", "ids")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    token: str
    id: int
    number: float
    tokens: TokenList
    ids: IdList
    def __init__(self, token: _Optional[str] = ..., id: _Optional[int] = ..., number: _Optional[float] = ..., tokens: _Optional[_Union[TokenList, _Mapping]] = ..., ids: _Optional[_Union[IdList, _Mapping]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("fields",)
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.MessageMap[str, Value]
    def __init__(self, fields: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("field", "ids", "tokens", "numbers", "lengths")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    field: str
    ids: IdList
    tokens: TokenList
    numbers: NumberList
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, field: _Optional[str] = ..., ids: _Optional[_Union[IdList, _Mapping]] = ..., tokens: _Optional[_Union[TokenList, _Mapping]] = ..., numbers: _Optional[_Union[NumberList, _Mapping]] = ..., lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class ColumnBatch(_message.Message):
    __slots__ = ("num_rows", "columns")
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    num_rows: int
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    def __init__(self, num_rows: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("rows", "columns")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    columns: ColumnBatch
    def __init__(self, rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., columns: _Optional[_Union[ColumnBatch, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("probabilities", "clusters", "bundle_version")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    clusters: _containers.RepeatedScalarFieldContainer[int]
    bundle_version: str
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., clusters: _Optional[_Iterable[int]] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FieldInfo(_message.Message):
    __slots__ = ("name", "kind", "num_embeddings", "vocab_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    num_embeddings: int
    vocab_size: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., num_embeddings: _Optional[int] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("id", "dims")
    class DimsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    id: int
    dims: _containers.ScalarMap[str, int]
    def __init__(self, id: _Optional[int] = ..., dims: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("bundle_version", "dataset", "schema_version", "created", "fields", "clusters", "has_router", "max_batch_rows", "metrics_json", "quantization")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    HAS_ROUTER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    dataset: str
    schema_version: int
    created: str
    fields: _containers.RepeatedCompositeFieldContainer[FieldInfo]
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterInfo]
    has_router: bool
    max_batch_rows: int
    metrics_json: str
    quantization: str
    def __init__(self, bundle_version: _Optional[str] = ..., dataset: _Optional[str] = ..., schema_version: _Optional[int] = ..., created: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FieldInfo, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[ClusterInfo, _Mapping]]] = ..., has_router: _Optional[bool] = ..., max_batch_rows: _Optional[int] = ..., metrics_json: _Optional[str] = ..., quantization: _Optional[str] = ...) -> None: ...
