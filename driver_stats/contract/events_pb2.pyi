import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_OFF: _ClassVar[FinishReason]
    RIDER_CANCEL: _ClassVar[FinishReason]
    DRIVER_CANCEL: _ClassVar[FinishReason]
    ADMIN_CANCEL: _ClassVar[FinishReason]
DROP_OFF: FinishReason
RIDER_CANCEL: FinishReason
DRIVER_CANCEL: FinishReason
ADMIN_CANCEL: FinishReason

class DriverRated(_message.Message):
    __slots__ = ("driver_id", "rider_id", "journey_id", "rated_at", "rating")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    RIDER_ID_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_ID_FIELD_NUMBER: _ClassVar[int]
    RATED_AT_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    rider_id: str
    journey_id: str
    rated_at: _timestamp_pb2.Timestamp
    rating: int
    def __init__(self, driver_id: _Optional[str] = ..., rider_id: _Optional[str] = ..., journey_id: _Optional[str] = ..., rated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rating: _Optional[int] = ...) -> None: ...

class DriverTipped(_message.Message):
    __slots__ = ("driver_id", "rider_id", "journey_id", "tipped_at", "amount")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    RIDER_ID_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_ID_FIELD_NUMBER: _ClassVar[int]
    TIPPED_AT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    driver_id: str
    rider_id: str
    journey_id: str
    tipped_at: _timestamp_pb2.Timestamp
    amount: int
    def __init__(self, driver_id: _Optional[str] = ..., rider_id: _Optional[str] = ..., journey_id: _Optional[str] = ..., tipped_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., amount: _Optional[int] = ...) -> None: ...

class JourneyFinished(_message.Message):
    __slots__ = ("journey_id", "driver_id", "rider_id", "finish_reason", "started_at", "ended_at", "distance", "price")
    JOURNEY_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    RIDER_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    journey_id: str
    driver_id: str
    rider_id: str
    finish_reason: FinishReason
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    distance: int
    price: int
    def __init__(self, journey_id: _Optional[str] = ..., driver_id: _Optional[str] = ..., rider_id: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., distance: _Optional[int] = ..., price: _Optional[int] = ...) -> None: ...
