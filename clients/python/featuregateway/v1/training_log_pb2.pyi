import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from featuregateway.v1 import feature_service_pb2 as _feature_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingLogRecord(_message.Message):
    __slots__ = ("schema_version", "request_id", "served_at", "feature_service", "definition_hash", "latency_us", "entities", "context", "features", "inputs")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_HASH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    request_id: str
    served_at: _timestamp_pb2.Timestamp
    feature_service: str
    definition_hash: str
    latency_us: int
    entities: _containers.RepeatedCompositeFieldContainer[NamedValue]
    context: _containers.RepeatedCompositeFieldContainer[NamedValue]
    features: _containers.RepeatedCompositeFieldContainer[LoggedFeature]
    inputs: _containers.RepeatedCompositeFieldContainer[LoggedFeature]
    def __init__(self, schema_version: _Optional[int] = ..., request_id: _Optional[str] = ..., served_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_service: _Optional[str] = ..., definition_hash: _Optional[str] = ..., latency_us: _Optional[int] = ..., entities: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., context: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., features: _Optional[_Iterable[_Union[LoggedFeature, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[LoggedFeature, _Mapping]]] = ...) -> None: ...

class NamedValue(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: _feature_service_pb2.Value
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[_feature_service_pb2.Value, _Mapping]] = ...) -> None: ...

class LoggedFeature(_message.Message):
    __slots__ = ("name", "value", "status", "age_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: _feature_service_pb2.Value
    status: _feature_service_pb2.FeatureStatus
    age_ms: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[_feature_service_pb2.Value, _Mapping]] = ..., status: _Optional[_Union[_feature_service_pb2.FeatureStatus, str]] = ..., age_ms: _Optional[int] = ...) -> None: ...
