from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadRequest(_message.Message):
    __slots__ = ("bundle_dir",)
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    bundle_dir: str
    def __init__(self, bundle_dir: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("bundle_version", "previous_version", "bundle_dir", "seconds")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIR_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    previous_version: str
    bundle_dir: str
    seconds: float
    def __init__(self, bundle_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., bundle_dir: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
