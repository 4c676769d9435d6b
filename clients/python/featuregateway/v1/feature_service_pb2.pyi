import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NullValue(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NULL_VALUE_NULL: _ClassVar[NullValue]

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    FEATURE_STATUS_PRESENT: _ClassVar[FeatureStatus]
    FEATURE_STATUS_NOT_FOUND: _ClassVar[FeatureStatus]
    FEATURE_STATUS_NULL_VALUE: _ClassVar[FeatureStatus]
    FEATURE_STATUS_OUTSIDE_MAX_AGE: _ClassVar[FeatureStatus]
    FEATURE_STATUS_TIMED_OUT: _ClassVar[FeatureStatus]
    FEATURE_STATUS_SOURCE_ERROR: _ClassVar[FeatureStatus]
    FEATURE_STATUS_STALE: _ClassVar[FeatureStatus]

class CacheOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_OUTCOME_UNSPECIFIED: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_HIT: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_MISS: _ClassVar[CacheOutcome]

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    VALUE_TYPE_INT64: _ClassVar[ValueType]
    VALUE_TYPE_DOUBLE: _ClassVar[ValueType]
    VALUE_TYPE_STRING: _ClassVar[ValueType]
    VALUE_TYPE_BOOL: _ClassVar[ValueType]
    VALUE_TYPE_BYTES: _ClassVar[ValueType]
    VALUE_TYPE_TIMESTAMP: _ClassVar[ValueType]
    VALUE_TYPE_INT64_LIST: _ClassVar[ValueType]
    VALUE_TYPE_DOUBLE_LIST: _ClassVar[ValueType]
    VALUE_TYPE_STRING_LIST: _ClassVar[ValueType]
NULL_VALUE_NULL: NullValue
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
FEATURE_STATUS_PRESENT: FeatureStatus
FEATURE_STATUS_NOT_FOUND: FeatureStatus
FEATURE_STATUS_NULL_VALUE: FeatureStatus
FEATURE_STATUS_OUTSIDE_MAX_AGE: FeatureStatus
FEATURE_STATUS_TIMED_OUT: FeatureStatus
FEATURE_STATUS_SOURCE_ERROR: FeatureStatus
FEATURE_STATUS_STALE: FeatureStatus
CACHE_OUTCOME_UNSPECIFIED: CacheOutcome
CACHE_OUTCOME_HIT: CacheOutcome
CACHE_OUTCOME_MISS: CacheOutcome
VALUE_TYPE_UNSPECIFIED: ValueType
VALUE_TYPE_INT64: ValueType
VALUE_TYPE_DOUBLE: ValueType
VALUE_TYPE_STRING: ValueType
VALUE_TYPE_BOOL: ValueType
VALUE_TYPE_BYTES: ValueType
VALUE_TYPE_TIMESTAMP: ValueType
VALUE_TYPE_INT64_LIST: ValueType
VALUE_TYPE_DOUBLE_LIST: ValueType
VALUE_TYPE_STRING_LIST: ValueType

class Value(_message.Message):
    __slots__ = ("int64_value", "double_value", "string_value", "bool_value", "bytes_value", "timestamp_value", "int64_list_value", "double_list_value", "string_list_value", "null_value")
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT64_LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    double_value: float
    string_value: str
    bool_value: bool
    bytes_value: bytes
    timestamp_value: _timestamp_pb2.Timestamp
    int64_list_value: Int64List
    double_list_value: DoubleList
    string_list_value: StringList
    null_value: NullValue
    def __init__(self, int64_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., bytes_value: _Optional[bytes] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., int64_list_value: _Optional[_Union[Int64List, _Mapping]] = ..., double_list_value: _Optional[_Union[DoubleList, _Mapping]] = ..., string_list_value: _Optional[_Union[StringList, _Mapping]] = ..., null_value: _Optional[_Union[NullValue, str]] = ...) -> None: ...

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFeaturesRequest(_message.Message):
    __slots__ = ("feature_service", "features", "entities", "context", "request_id", "include_metadata")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    features: _containers.RepeatedScalarFieldContainer[str]
    entities: _containers.MessageMap[str, Value]
    context: _containers.MessageMap[str, Value]
    request_id: str
    include_metadata: bool
    def __init__(self, feature_service: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., entities: _Optional[_Mapping[str, Value]] = ..., context: _Optional[_Mapping[str, Value]] = ..., request_id: _Optional[str] = ..., include_metadata: _Optional[bool] = ...) -> None: ...

class GetFeaturesResponse(_message.Message):
    __slots__ = ("request_id", "feature_names", "values", "statuses", "metadata", "request_metadata")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_METADATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    metadata: _containers.RepeatedCompositeFieldContainer[FeatureMetadata]
    request_metadata: RequestMetadata
    def __init__(self, request_id: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., metadata: _Optional[_Iterable[_Union[FeatureMetadata, _Mapping]]] = ..., request_metadata: _Optional[_Union[RequestMetadata, _Mapping]] = ...) -> None: ...

class FeatureMetadata(_message.Message):
    __slots__ = ("source", "source_kind", "event_time", "age_ms", "cache", "fetch_latency_us", "default_applied", "detail")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KIND_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    FETCH_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_APPLIED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    source: str
    source_kind: str
    event_time: _timestamp_pb2.Timestamp
    age_ms: int
    cache: CacheOutcome
    fetch_latency_us: int
    default_applied: bool
    detail: str
    def __init__(self, source: _Optional[str] = ..., source_kind: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., age_ms: _Optional[int] = ..., cache: _Optional[_Union[CacheOutcome, str]] = ..., fetch_latency_us: _Optional[int] = ..., default_applied: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class RequestMetadata(_message.Message):
    __slots__ = ("deadline_ms", "total_us", "stage_us")
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    STAGE_US_FIELD_NUMBER: _ClassVar[int]
    deadline_ms: int
    total_us: int
    stage_us: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deadline_ms: _Optional[int] = ..., total_us: _Optional[int] = ..., stage_us: _Optional[_Iterable[int]] = ...) -> None: ...

class GetFeaturesBatchRequest(_message.Message):
    __slots__ = ("feature_service", "features", "rows", "request_id", "include_metadata")
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    features: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[EntityRow]
    request_id: str
    include_metadata: bool
    def __init__(self, feature_service: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[EntityRow, _Mapping]]] = ..., request_id: _Optional[str] = ..., include_metadata: _Optional[bool] = ...) -> None: ...

class EntityRow(_message.Message):
    __slots__ = ("entities", "context")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.MessageMap[str, Value]
    context: _containers.MessageMap[str, Value]
    def __init__(self, entities: _Optional[_Mapping[str, Value]] = ..., context: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class GetFeaturesBatchResponse(_message.Message):
    __slots__ = ("request_id", "feature_names", "rows")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    def __init__(self, request_id: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("values", "statuses", "metadata")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    metadata: _containers.RepeatedCompositeFieldContainer[FeatureMetadata]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., metadata: _Optional[_Iterable[_Union[FeatureMetadata, _Mapping]]] = ...) -> None: ...

class ListFeatureServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFeatureServicesResponse(_message.Message):
    __slots__ = ("feature_services",)
    FEATURE_SERVICES_FIELD_NUMBER: _ClassVar[int]
    feature_services: _containers.RepeatedCompositeFieldContainer[FeatureServiceSummary]
    def __init__(self, feature_services: _Optional[_Iterable[_Union[FeatureServiceSummary, _Mapping]]] = ...) -> None: ...

class FeatureServiceSummary(_message.Message):
    __slots__ = ("name", "description", "feature_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    feature_count: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., feature_count: _Optional[int] = ...) -> None: ...

class DescribeFeatureServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeFeatureServiceResponse(_message.Message):
    __slots__ = ("name", "description", "features", "entities", "context", "deadline_ms", "definition_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureDescription]
    entities: _containers.RepeatedCompositeFieldContainer[EntityDescription]
    context: _containers.RepeatedCompositeFieldContainer[ContextDescription]
    deadline_ms: int
    definition_hash: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureDescription, _Mapping]]] = ..., entities: _Optional[_Iterable[_Union[EntityDescription, _Mapping]]] = ..., context: _Optional[_Iterable[_Union[ContextDescription, _Mapping]]] = ..., deadline_ms: _Optional[int] = ..., definition_hash: _Optional[str] = ...) -> None: ...

class FeatureDescription(_message.Message):
    __slots__ = ("name", "type", "source", "max_age_ms", "default_value", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ValueType
    source: str
    max_age_ms: int
    default_value: Value
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ValueType, str]] = ..., source: _Optional[str] = ..., max_age_ms: _Optional[int] = ..., default_value: _Optional[_Union[Value, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class EntityDescription(_message.Message):
    __slots__ = ("name", "type", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ValueType
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ValueType, str]] = ..., description: _Optional[str] = ...) -> None: ...

class ContextDescription(_message.Message):
    __slots__ = ("name", "type", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ValueType
    required: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ValueType, str]] = ..., required: _Optional[bool] = ...) -> None: ...

class PushEventsRequest(_message.Message):
    __slots__ = ("view", "events")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    view: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, view: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
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

class PushEventsResponse(_message.Message):
    __slots__ = ("applied", "late", "rejected")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    late: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    def __init__(self, applied: _Optional[int] = ..., late: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
