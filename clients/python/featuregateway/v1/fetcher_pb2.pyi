import datetime

from featuregateway.v1 import feature_service_pb2 as _feature_service_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchRequest(_message.Message):
    __slots__ = ("view", "features", "keys")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    view: str
    features: _containers.RepeatedScalarFieldContainer[str]
    keys: _containers.RepeatedCompositeFieldContainer[EntityKey]
    def __init__(self, view: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., keys: _Optional[_Iterable[_Union[EntityKey, _Mapping]]] = ...) -> None: ...

class EntityKey(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[_feature_service_pb2.Value]
    def __init__(self, parts: _Optional[_Iterable[_Union[_feature_service_pb2.Value, _Mapping]]] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    def __init__(self, rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("found", "cells", "event_time")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    found: bool
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, found: _Optional[bool] = ..., cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("value", "error")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    value: _feature_service_pb2.Value
    error: str
    def __init__(self, value: _Optional[_Union[_feature_service_pb2.Value, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...
